"""What every command line here shares: dataclass configs -> argparse, atomic file writes, the
check before replacing an output that holds results (--overwrite), device choice. Standard library
only (label_tool.py and labels.py must start without torch).

A config is a dataclass whose fields each carry a docstring (the string right under the field);
that string becomes the field's --help line:

    @dataclass
    class Args:
        lr: float = 1e-5
        \"\"\"learning rate\"\"\"

    args = cli.parse(Args, description="...")          # --lr 3e-4

A field whose default is itself a dataclass (field(default_factory=Sub)) is nested: its fields get
flags under a prefix, `--<name>.<field>` (e.g. ppo.py's `--rm.lr`), or no prefix at all when the
caller asks for it (reward.py train). Bool fields get --x / --no-x, list fields take one or more
values (`--stats a.jsonl b.jsonl`, or the flag repeated).

A long config's --help is split into groups. A comment `# --help: TITLE` in the class puts fields
under TITLE: on a line of its own, every field after it (to the next such comment); at the end of a
field's line, that field alone. Other fields are in their class's group (titled by its docstring),
a nested dataclass in a group of its own; groups of one title merge, across base classes.

Errors: a command's expected errors (a bad flag or input file, a missing download) are UserError,
or SystemExit("error: ..."); `run_main` runs a command's main() so that either is one line on
stderr and Ctrl-C is one line saying what was saved (`on_interrupt`). Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import tokenize
from pathlib import Path
from typing import Any, Callable

# --------------------------------------------------------------------------------------------------
# Dataclass -> argparse


def field_docs(cls) -> dict[str, str]:
    """Each dataclass field's docstring: the string literal right after it in the class source
    (dataclasses drop them, so read them from the source), whitespace collapsed to one line.
    Inherited fields' come from the base class that declares them."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    return docs | {
        a.target.id: " ".join(b.value.value.split())
        for a, b in zip(body, body[1:])
        if isinstance(a, ast.AnnAssign)
        and isinstance(a.target, ast.Name)
        and isinstance(b, ast.Expr)
        and isinstance(b.value, ast.Constant)
        and isinstance(b.value.value, str)
    }


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} needs a default to become a command-line flag")


def _int_or_str(text: str) -> int | str:
    """A number where the text is one, else the text (e.g. --micro-batch-size 32 or auto)."""
    try:
        return int(text)
    except ValueError:
        return text


_TYPES = {"int": int, "float": float, "str": str, "int | str": _int_or_str}


def _scalar_type(f: dataclasses.Field, default):
    """int / float / str from the annotation (a string under `from __future__ import
    annotations`), else from the default."""
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return _TYPES.get(name) or (type(default) if default is not None else str)


def _title(cls) -> str:
    """A --help group's title: the first line of the class docstring (dataclasses make one from
    the signature for a class without: then its name)."""
    doc = cls.__doc__ or ""
    if not doc.strip() or doc.startswith(cls.__name__ + "("):
        return cls.__name__
    return doc.strip().split(". ")[0].splitlines()[0].rstrip(".:")


_HELP_GROUP = re.compile(r"#\s*--help:\s*(.+?)\s*$")


def field_groups(cls) -> dict[str, str]:
    """The --help group title of each field `cls` declares itself (inherited ones aside), in the
    order declared: a `# --help: TITLE` comment's (see the module docstring), else the class's
    title. Comments are read from the source, as field_docs reads docstrings."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    fields = {
        a.lineno: a.target.id
        for a in body
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
    }
    comments = {}  # line -> (title, whether the comment is the whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        found = _HELP_GROUP.match(tok.string) if tok.type == tokenize.COMMENT else None
        if found:
            comments[tok.start[0]] = (found.group(1), not tok.line[: tok.start[1]].strip())
    title, groups = _title(cls), {}
    for line in sorted({*fields, *comments}):
        own, whole_line = comments.get(line, (None, False))
        if whole_line:
            title = own
        elif line in fields:
            groups[fields[line]] = own or title
    return groups


def _help_groups(parser, cls, flat, order) -> dict:
    """Field name -> its --help group (a nested dataclass's name -> a group of its own, unless
    flat), or {} when every field would be in one. The groups come in the order of the fields
    named in `order`, then of the classes, most derived first."""
    titles = {}
    for base in cls.__mro__:
        if dataclasses.is_dataclass(base):
            for name, title in field_groups(base).items():
                titles.setdefault(name, title)
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default) and f.name not in flat:
            titles[f.name] = f"{_title(type(default))} (--{f.name}.*)"
    if len(set(titles.values())) < 2:
        return {}
    names = [n for n in order if n in titles] + list(titles)
    made = {t: parser.add_argument_group(t) for t in dict.fromkeys(titles[n] for n in names)}
    return {name: made[title] for name, title in titles.items()}


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls,
    prefix: str = "",
    positional: tuple[str, ...] = (),
    only_given: bool = False,
    flat: tuple[str, ...] = (),
    order: tuple[str, ...] = (),
) -> None:
    """One flag per field of `cls` (recursing into nested dataclass fields), each with its
    docstring and default as help. The namespace key of a field is its dotted path ("rm.lr").

    positional: fields taken as optional positional arguments instead of flags.
    only_given: flags not given stay out of the namespace (argparse.SUPPRESS), so a caller can
      layer them over other defaults (ppo.py's resolve_config).
    flat: nested fields whose own fields get flags without the `<name>.` prefix.
    order: fields whose --help groups come first, in this order (see the module docstring for the
      groups). A config with groups gets a short usage line: its groups list the flags."""
    docs = field_docs(cls)
    fields = dataclasses.fields(cls)
    groups = {}
    if not prefix and isinstance(parser, argparse.ArgumentParser):
        groups = _help_groups(parser, cls, flat, order)
    if groups:  # the class's own fields first, then its bases'
        place = {name: i for i, name in enumerate(groups)}
        fields = sorted(fields, key=lambda f: place.get(f.name, len(place)))
        parser.usage = "%(prog)s [-h] [--OPTION VALUE ...]"
    for f in fields:
        default = _default(f)
        dest = prefix + f.name
        if dataclasses.is_dataclass(default):
            sub_prefix = prefix if f.name in flat else dest + "."
            sub = groups.get(f.name, parser)
            add_dataclass_args(sub, type(default), sub_prefix, only_given=only_given)
            continue
        target = groups.get(f.name, parser)
        helptext = docs.get(f.name, "")
        shown = f" (default: {default!r})" if default not in ("", []) else ""
        unset = argparse.SUPPRESS if only_given else default
        if f.name in positional:
            target.add_argument(dest, nargs="?", default=unset, help=helptext)
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(default, bool):
            target.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=unset,
                help=helptext + shown,
            )
        elif isinstance(default, list):
            # `--x a b` and `--x a --x b` both give [a, b]; the default list is never mutated
            target.add_argument(
                flag,
                dest=dest,
                nargs="+",
                action="extend",
                default=argparse.SUPPRESS if only_given else None,
                metavar=f.name.upper(),
                help=helptext + shown,
            )
        else:
            target.add_argument(
                flag,
                dest=dest,
                type=_scalar_type(f, default),
                default=unset,
                metavar=f.name.upper(),
                help=helptext + shown,
            )


def flatten(values: dict, prefix: str = "") -> dict:
    """{"rm": {"lr": 1}} -> {"rm.lr": 1}: nested config dicts (dataclasses.asdict, config.json) to
    the dotted keys the parser uses."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def from_flat(cls, values: dict, where: str = "config", flat: tuple[str, ...] = ()):
    """The dataclass `cls` from dotted keys (missing keys keep their defaults, None for a list
    means its default; `flat` as for add_dataclass_args). An unknown key is an error that names
    it."""
    values = dict(values)
    out = _build(cls, values, "", flat)
    if values:
        raise ValueError(f"{where}: unknown option(s) {', '.join(sorted(values))}")
    return out


def _build(cls, values: dict, prefix: str, flat: tuple[str, ...] = ()):
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        key = prefix + f.name
        if dataclasses.is_dataclass(default):
            sub_prefix = prefix if f.name in flat else key + "."
            kwargs[f.name] = _build(type(default), values, sub_prefix)
        elif key in values:
            v = values.pop(key)
            kwargs[f.name] = default if v is None and isinstance(default, list) else v
    return cls(**kwargs)


def module_prog() -> str | None:
    """`python -m machinery.tasks` for a module of machinery/ run as the program (argparse would
    say `tasks.py`, which is not how it runs); None otherwise (argparse's own)."""
    path = Path(sys.argv[0])
    return f"python -m machinery.{path.stem}" if path.parent.name == "machinery" else None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (they hold examples), but for a line longer than the
    source's 100 columns (a long string, not a line written by hand), which is wrapped (an
    indented one with its continuation indented further); option help wrapped."""

    def _fill_text(self, text, width, indent):
        out = []
        for line in text.splitlines():
            lead = indent + line[: len(line) - len(line.lstrip())]
            if len(line) > max(width, 100):
                more = lead + "    " * (lead != indent)
                wrap = dict(initial_indent=lead, subsequent_indent=more, break_on_hyphens=False)
                out.append(textwrap.fill(line.strip(), width, **wrap))
            else:
                out.append(indent + line)
        return "\n".join(out)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, `PROG: error: MESSAGE (see PROG --help)`, status 2,
    instead of the whole usage block; an unknown flag gets the nearest known one."""

    def error(self, message):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        for arg in unknown.group(1).split() if unknown else []:
            near = difflib.get_close_matches(arg.split("=")[0], self._option_string_actions, n=1)
            if arg.startswith("--") and near:
                message += f" (did you mean {near[0]}?)"
                break
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(
    cls,
    description: str | None = None,
    epilog: str | None = None,
    positional: tuple[str, ...] = (),
    only_given: bool = False,
    flat: tuple[str, ...] = (),
    order: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """The parser of `cls` (add_dataclass_args); its usage line names the subcommand that runs
    (dispatch), e.g. `usage: reward.py train`."""
    parser = Parser(
        prog=_prog or module_prog(),
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    add_dataclass_args(
        parser, cls, positional=positional, only_given=only_given, flat=flat, order=order
    )
    return parser


def parse(
    cls,
    argv: list[str] | None = None,
    description: str | None = None,
    epilog: str | None = None,
    positional: tuple[str, ...] = (),
    flat: tuple[str, ...] = (),
):
    """Parse argv (default: sys.argv[1:]) into a `cls` instance; --help lists every field."""
    parser = make_parser(cls, description, epilog, positional, flat=flat)
    return from_flat(cls, vars(parser.parse_args(argv)), flat=flat)


# --------------------------------------------------------------------------------------------------
# Running a command: expected errors and Ctrl-C in one line each, subcommands


class UserError(Exception):
    """An expected error (a bad flag, an input that cannot be read, a model that is not there):
    its message says what went wrong and what would work, and run_main prints it as one line."""


class UsageError(UserError):
    """A UserError that every torchrun process meets alike (the command line itself): rank 0
    alone says it."""


_interrupt_note: Callable[[], str] | None = None  # on_interrupt's
_prog: str | None = None  # the subcommand dispatch runs ("reward.py train"), for its usage line


def on_interrupt(note: Callable[[], str]) -> None:
    """What run_main says after `stopped (Ctrl-C)`: note() (called then, so that it can look at
    the files) says what is saved and the command that continues."""
    global _interrupt_note
    _interrupt_note = note


def run_main(main: Callable[[], Any]) -> None:
    """Run a command's main() as the program, and exit: with main's status (an int; else 0); an
    expected error (UserError, or SystemExit with a message) as one line on stderr, status 1;
    Ctrl-C as one line, `stopped (Ctrl-C)` and on_interrupt's note, status 130 (whatever was being
    written is not: every result file is written atomically). Anything else is a bug and keeps
    its traceback. Under torchrun (RANK set) rank 0 alone says a UsageError or Ctrl-C, and a
    failing rank's line goes into torchrun's report too (its error file)."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        status = main()
    except UsageError as e:
        if rank:
            sys.exit(0)  # rank 0 says it and fails the job
        _fail(f"error: {e}", 1)
    except UserError as e:
        _fail(f"error: {e}", 1)
    except BrokenPipeError:  # the reader left (`ppo.py --help | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        sys.exit(141)  # as a shell reports SIGPIPE
    except SystemExit as e:
        if isinstance(e.code, str):
            _fail(e.code, 1)
        raise
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line
        try:
            note = _interrupt_note() if _interrupt_note and not rank else ""
        except Exception:  # the note is a courtesy: never a traceback instead of the line
            note = ""
        if rank:
            sys.exit(130)
        # a terminal shows ^C where the cursor was: the line starts below it and below any progress
        # bar, which is closed now rather than redrawn under the line at exit
        bars = list(getattr(getattr(sys.modules.get("tqdm"), "tqdm", None), "_instances", ()))
        for bar in bars:
            bar.close()
        fresh = "" if bars or not sys.stderr.isatty() else "\n"
        _fail(fresh + "stopped (Ctrl-C)" + (f"; {note}" if note else ""), 130)
    sys.exit(status if isinstance(status, int) else 0)


def _fail(line: str, status: int):
    print(line, file=sys.stderr)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")  # torchrun's, per rank
    if path:  # its report then shows this line rather than a link to its docs
        when = str(int(time.time()))
        error = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": when}}
        try:
            Path(path).write_text(json.dumps({"message": error}))
        except OSError:
            pass
    sys.exit(status)


def dispatch(prog: str, commands: dict, argv: list[str] | None, doc: str) -> int:
    """A command made of subcommands (`reward.py train ...`): runs commands[argv[0]](argv[1:])
    and returns 0. No command: `doc`, status 2 (-h: 0); an unknown one: one line with the nearest
    and the list, status 2. The subcommand's parser names it (`usage: reward.py train ...`)."""
    global _prog
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        usage = f"usage: {prog} {{{','.join(commands)}}} [options]"
        more = f"run `python {prog} COMMAND --help` for a command's options"
        print(f"{usage}\n\n{doc.strip()}\n\n{more}")
        return 0 if argv else 2
    if argv[0] not in commands:
        near = difflib.get_close_matches(argv[0], commands, n=1)
        what = (
            f"give a command before its options ({argv[0]})"
            if argv[0].startswith("-")
            else f"unknown command {argv[0]!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
        )
        print(f"{prog}: {what}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    _prog = f"{prog} {argv[0]}"
    try:
        commands[argv[0]](argv[1:])
    finally:
        _prog = None
    return 0


# --------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path, data: bytes | str | Callable[[Any], None], encoding: str = "utf-8") -> None:
    """Replace `path` with new contents, all or nothing: write a temporary file in the same folder,
    flush and fsync it, rename it over `path` (atomic on POSIX), fsync the folder. A crash or an
    exception mid-write leaves the old file as it was (the temporary file is removed).

    data: bytes, str (written with `encoding`, newlines as given), or a writer called with the
    open binary file (e.g. `lambda f: torch.save(obj, f)`). Each call uses its own temporary name,
    so several processes may write the same path at once: the last rename wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode any new file gets (0666 less the umask),
        # so results are as readable as the files written with open()
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode(encoding) if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def fsync_dir(path) -> None:
    """fsync the folder holding `path`, so a rename or a new file in it survives a power cut."""
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------------------
# Outputs that may hold results already: a command replaces them only when told to (--overwrite)


def held(path, names: tuple[str, ...] = ()) -> list[str]:
    """What writing `path` would replace: a file (or anything but a folder) that is not empty ->
    [its name]; a folder -> those of `names` inside it (a folder's name ends in /; a name may be
    a glob pattern: eval-*), or with no `names`, everything inside it. Nothing there, or an empty
    file: []."""
    path = Path(path)
    if path.is_dir():
        names = tuple(n.rstrip("/") for n in names)
        if names:
            found = [m.name for n in names for m in sorted(path.glob(n))]
        else:
            found = sorted(os.listdir(path))
        return [n + "/" if (path / n).is_dir() else n for n in found]
    if path.exists() and not (path.is_file() and path.stat().st_size == 0):
        return [path.name]
    return []


def rerun(script: str, args: list[str] | None, flag: str = "--overwrite") -> str:
    """`python SCRIPT ARGS FLAG`, quoted for a shell: the command that was run, with a flag added
    (unless given already, or empty), for an error message to offer. args None: this process's
    own arguments when it runs SCRIPT's file (its first word), else `...`."""
    if args is None:
        same = Path(sys.argv[0]).name == Path(script.split()[0]).name
        args = sys.argv[1:] if same else ["..."]
    words = [a if a == "..." else shlex.quote(a) for a in args]
    script = " ".join([script_path(script.split()[0]), *script.split()[1:]])
    return " ".join(["python", script, *words, *([flag] if flag and flag not in args else [])])


def script_path(script: str) -> str:
    """A file of this checkout (ppo.py, docs/frontier.py) as the user can run it from the current
    folder: its path relative to here (just its name in the checkout's root), or the absolute
    path where that is shorter."""
    path = Path(__file__).resolve().parent.parent / script
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return shlex.quote(str(path))
    return shlex.quote(rel if len(rel) <= len(str(path)) else str(path))


def check_output(path, flag: str, overwrite: bool, command: str) -> None:
    """Before a command writes the file `path` (given as `flag`): a folder there, or a file that
    is not empty unless `overwrite`, is a one-line SystemExit that says what would work (command:
    the same command with --overwrite, see rerun). Call it before anything loads."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"error: {flag} {path} is a folder; give a file name ({flag} FILE)")
    if not overwrite and held(path):
        raise SystemExit(
            f"error: {flag} {path} already exists ({path.stat().st_size:,} bytes) and would be "
            f"replaced; give another {flag}, or replace it: {command}"
        )


def check_folder_output(path, flag: str, overwrite: bool, command: str, own=()) -> None:
    """Before a command replaces the folder `path` whole (given as `flag`; it writes the files
    `own` into it): a file there, a folder that holds anything but `own` (even with overwrite:
    those files would be lost), or one that holds `own` unless `overwrite`, is a one-line
    SystemExit that says what would work (command: the same command with --overwrite)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: {flag} {path} is a file; give a folder")
    found = held(path)
    other = [n for n in found if n not in own]
    if other:
        raise SystemExit(
            f"error: {flag} {path} holds {', '.join(other)}, which {flag} does not write and "
            f"would delete; give a new or empty folder"
        )
    if found and not overwrite:
        raise SystemExit(
            f"error: {flag} {path} already holds {', '.join(found)}, which would be replaced; "
            f"give another {flag}, or replace them: {command}"
        )


def remove(folder, names) -> list[str]:
    """Delete the entries `names` of `folder` (files, or folders with everything in them) and the
    folder too if nothing else is left in it; returns what was deleted (held's spelling). What is
    not named stays."""
    folder = Path(folder)
    gone = held(folder, tuple(names))
    for name in gone:
        p = folder / name.rstrip("/")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return gone


# --------------------------------------------------------------------------------------------------
# Device


def pick_device(name: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; 'cuda' without one is a clear
    error. (torch is imported here only, so this module stays importable without it.)"""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    if name == "cpu":
        reuse_freed_memory()
    return name


def reuse_freed_memory() -> bool:
    """Make the C allocator keep freed memory for the next tensor instead of returning it to the
    operating system. True where it took (Linux with glibc), False elsewhere (nothing changes).

    Why: PyTorch's CPU tensors come from malloc, and glibc serves a block of more than 32 MiB
    (less at first) with a fresh mmap and unmaps it at free. A PPO update at 124M allocates and
    frees many such blocks (gradients, the (V, C) LM-head gradient, log-prob chunks), and every
    page of a fresh mapping costs a page fault and the kernel's zeroing of it. Raising the mmap
    threshold to 2 GiB serves them from the heap, and raising the trim threshold keeps the heap's
    freed top for reuse. Measured on 2 CPU cores: the (V, C) = (50257, 768) weight gradient of 96
    rows took 440-490 ms with 37,700 page faults, 250-300 ms with about 6,000. The cost: the
    process keeps its peak memory until it exits. The arithmetic is unchanged, bit for bit."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 2**31 - 1)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
