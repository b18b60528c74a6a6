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
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import shlex
import shutil
import sys
import tempfile
import textwrap
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
    """A --help group's title: the first line of the class docstring."""
    return (cls.__doc__ or cls.__name__).strip().split(". ")[0].splitlines()[0].rstrip(".:")


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls,
    prefix: str = "",
    positional: tuple[str, ...] = (),
    only_given: bool = False,
    flat: tuple[str, ...] = (),
) -> None:
    """One flag per field of `cls` (recursing into nested dataclass fields), each with its
    docstring and default as help. The namespace key of a field is its dotted path ("rm.lr").

    positional: fields taken as optional positional arguments instead of flags.
    only_given: flags not given stay out of the namespace (argparse.SUPPRESS), so a caller can
      layer them over other defaults (ppo.py's resolve_config).
    flat: nested fields whose own fields get flags without the `<name>.` prefix.
    A config built from several dataclasses (ppo.py's) gets a --help group per class, titled by
    its docstring, the class's own fields first; a nested dataclass gets a group of its own."""
    docs = field_docs(cls)
    groups = {}
    if not prefix and len([b for b in cls.__mro__ if dataclasses.is_dataclass(b)]) > 1:
        for base in cls.__mro__:
            own = getattr(base, "__annotations__", {}) if "__annotations__" in vars(base) else {}
            if dataclasses.is_dataclass(base) and own:
                group = parser.add_argument_group(_title(base))
                groups.update({name: group for name in own if name not in groups})
    for f in dataclasses.fields(cls):
        default = _default(f)
        dest = prefix + f.name
        if dataclasses.is_dataclass(default):
            sub_prefix = prefix if f.name in flat else dest + "."
            sub = parser
            if groups:
                sub = parser.add_argument_group(f"{_title(type(default))} (--{dest}.*)")
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (they hold examples), option help wrapped."""


def make_parser(
    cls,
    description: str | None = None,
    epilog: str | None = None,
    positional: tuple[str, ...] = (),
    only_given: bool = False,
    flat: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    add_dataclass_args(parser, cls, positional=positional, only_given=only_given, flat=flat)
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
    [its name]; a folder -> those of `names` inside it (a folder's name ends in /), or with no
    `names`, everything inside it. Nothing there, or an empty file: []."""
    path = Path(path)
    if path.is_dir():
        names = tuple(n.rstrip("/") for n in names)
        found = [n for n in names if (path / n).exists()] if names else sorted(os.listdir(path))
        return [n + "/" if (path / n).is_dir() else n for n in found]
    if path.exists() and not (path.is_file() and path.stat().st_size == 0):
        return [path.name]
    return []


def rerun(script: str, args: list[str] | None, flag: str = "--overwrite") -> str:
    """`python SCRIPT ARGS FLAG`, quoted for a shell: the command that was run, with a flag added,
    for an error message to offer. args None: this process's own arguments when it runs SCRIPT's
    file (its first word), else `...`."""
    if args is None:
        same = Path(sys.argv[0]).name == Path(script.split()[0]).name
        args = sys.argv[1:] if same else ["..."]
    return " ".join(["python", script, *(a if a == "..." else shlex.quote(a) for a in args), flag])


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
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    return name
