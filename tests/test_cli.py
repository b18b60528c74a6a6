"""cli.py: --help from field docstrings, bool / list / nested flags, atomic writes; and ppo.py's
configuration precedence (defaults < task < tiny < resumed config < flags) on a hand-made case."""

import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

from machinery import cli, presets


@dataclass
class Inner:
    lr: float = 5e-5
    """inner learning rate"""
    epochs: int = 1
    """passes over the labels"""


@dataclass
class Outer:
    name: str = "run"
    """the run's name"""
    steps: int = 3
    """how many steps
    to take (a docstring over two lines)"""
    whiten: bool = True
    """whiten the rewards"""
    prompts: list = field(default_factory=lambda: ["a"])
    """prompts to use"""
    rm: Inner = field(default_factory=Inner)
    """the inner options"""


def test_field_docs_reads_each_docstring_on_one_line():
    assert cli.field_docs(Outer) == {
        "name": "the run's name",
        "steps": "how many steps to take (a docstring over two lines)",
        "whiten": "whiten the rewards",
        "prompts": "prompts to use",
        "rm": "the inner options",
    }


def test_help_lists_every_field_doc_and_default(capsys):
    with pytest.raises(SystemExit):
        cli.parse(Outer, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in [
        "--name NAME the run's name (default: 'run')",
        "how many steps to take (a docstring over two lines) (default: 3)",
        "--whiten, --no-whiten whiten the rewards (default: True)",
        "--rm.lr LR inner learning rate (default: 5e-05)",
        "--rm.epochs EPOCHS passes over the labels (default: 1)",
    ]:
        assert text in out, text


def test_defaults_bool_list_and_nested_flags():
    assert cli.parse(Outer, []) == Outer()
    got = cli.parse(
        Outer,
        ["--no-whiten", "--steps", "7", "--prompts", "x", "y", "--prompts", "z", "--rm.lr", "1e-3"],
    )
    assert got == Outer(steps=7, whiten=False, prompts=["x", "y", "z"], rm=Inner(lr=1e-3))
    assert isinstance(got.rm.lr, float) and isinstance(got.steps, int)
    assert Outer().prompts == ["a"]  # the default list was not extended in place
    with pytest.raises(SystemExit):
        cli.parse(Outer, ["--steps", "many"])  # argparse's own error for a bad int


def test_flat_nested_fields_and_positionals():
    got = cli.parse(Outer, ["--epochs", "4", "mine"], positional=("name",), flat=("rm",))
    assert got == Outer(name="mine", rm=Inner(epochs=4))


def test_only_given_and_from_flat_layering():
    parser = cli.make_parser(Outer, only_given=True)
    given = vars(parser.parse_args(["--rm.epochs", "2", "--no-whiten"]))
    assert given == {"rm.epochs": 2, "whiten": False}  # nothing else: the caller layers them
    assert cli.flatten({"a": 1, "rm": {"lr": 2}}) == {"a": 1, "rm.lr": 2}
    assert cli.from_flat(Outer, given) == Outer(whiten=False, rm=Inner(epochs=2))
    with pytest.raises(ValueError, match="config.json: unknown option.*rm.nope"):
        cli.from_flat(Outer, {"rm.nope": 1}, "config.json")


def test_atomic_write_text_bytes_and_writer(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    cli.atomic_write(p, "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    cli.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    cli.atomic_write(p, lambda f: f.write(b"from a writer"))
    assert p.read_bytes() == b"from a writer"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.txt"]  # no temporary file left


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    # config.json, summary.json, rm.pt, eval/* were written 0600 while other files were 0644
    import os

    old = os.umask(0o022)
    try:
        cli.atomic_write(tmp_path / "a.json", "{}")
        with open(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
    assert mode("a.json") == mode("b.json") == 0o644


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    p = tmp_path / "ckpt.pt"
    p.write_bytes(b"the last good checkpoint")

    def half_then_crash(f):
        f.write(b"half a new checkpoint")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cli.atomic_write(p, half_then_crash)
    assert p.read_bytes() == b"the last good checkpoint"
    assert [x.name for x in tmp_path.iterdir()] == ["ckpt.pt"]


def test_outputs_that_hold_results(tmp_path, monkeypatch):
    """held / check_output / check_folder_output / remove: what counts as results, the refusal's
    one line, and what --overwrite removes (tests/test_folders.py runs the commands)."""
    f, d = tmp_path / "out.jsonl", tmp_path / "run"
    assert cli.held(f) == [] and cli.held(d, ("config.json",)) == []
    f.write_bytes(b"")
    assert cli.held(f) == []  # an empty file holds nothing
    cli.check_output(f, "--out", False, "CMD")
    f.write_text("{}\n")
    with pytest.raises(SystemExit, match=r"^error: --out .*out.jsonl already exists \(3 bytes\).*"
                       r"another --out, or replace it: CMD$"):  # fmt: skip
        cli.check_output(f, "--out", False, "CMD")
    cli.check_output(f, "--out", True, "CMD")
    (d / "policy").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "notes.txt").write_text("mine")
    assert cli.held(d, ("config.json", "policy", "rm.pt")) == ["config.json", "policy/"]
    with pytest.raises(SystemExit, match="is a folder"):
        cli.check_output(d, "--out", True, "CMD")
    with pytest.raises(SystemExit, match="holds notes.txt, policy/, which --export does not"):
        cli.check_folder_output(d, "--export", True, "CMD", ("config.json",))
    assert cli.remove(d, ("config.json", "policy/", "rm.pt")) == ["config.json", "policy/"]
    assert [p.name for p in d.iterdir()] == ["notes.txt"]  # what is not named stays
    assert cli.remove(d, ("notes.txt",)) == ["notes.txt"] and not d.exists()  # empty: gone too
    monkeypatch.setattr(sys, "argv", ["/x/ppo.py", "--name", "a b"])
    assert cli.rerun("ppo.py", None) == "python ppo.py --name 'a b' --overwrite"
    assert cli.rerun("reward.py sample", None) == "python reward.py sample ... --overwrite"
    assert cli.rerun("reward.py sample", ["--out", "c.jsonl"]).endswith("c.jsonl --overwrite")


def test_cli_is_standard_library_only():
    code = (
        "import sys; from machinery import cli; "
        "print([m for m in ('torch', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# ppo.py: the precedence block


def test_ppo_precedence_task_tiny_resumed_flags():
    import ppo

    # 1 < 2: the task's defaults beat Config's (tldr: lr 2e-6, batch 32, fixed β 0.03)
    cfg = presets.resolve_config(ppo.Config, {"task": "tldr"})
    assert (cfg.lr, cfg.batch_size, cfg.kl_coef, cfg.adaptive_kl) == (2e-6, 32, 0.03, False)
    assert cfg.temperature == 0.7 and cfg.rm.lr == 5e-5 and cfg.rm.num_comparisons == 4992
    # 2 < 3: tiny beats the task (lr 2e-4), and reaches into the nested reward-model options;
    # what tiny leaves alone keeps the task's value (kl_coef)
    cfg = presets.resolve_config(ppo.Config, {"task": "tldr", "model": "tiny"})
    assert (cfg.lr, cfg.kl_coef, cfg.rm.lr, cfg.rm.epochs) == (2e-4, 0.03, 3e-4, 8)
    assert cfg.run_dir.endswith("tldr-tiny-s1") and cfg.name == "tldr-tiny-s1"
    # 3 < 5: flags beat tiny, nested ones too
    cfg = presets.resolve_config(ppo.Config, {"model": "tiny", "lr": 1e-4, "rm.epochs": 2})
    assert (cfg.lr, cfg.rm.epochs, cfg.rm.lr) == (1e-4, 2, 3e-4)
    # 4 < 5: a resumed run's config.json beats defaults, task and tiny; its stop_after is dropped;
    # the flags given now beat it; the run stays in its folder
    saved = asdict(
        presets.resolve_config(ppo.Config, {"model": "tiny", "lr": 1e-4, "stop_after": 2})
    )
    saved["rm"]["lr"] = 7e-4
    saved["kl_coef"] = 0.5
    cfg = presets.resolve_config(
        ppo.Config, {"resume": "/runs/r1", "kl_coef": 0.25, "seed": 3}, saved
    )
    assert (cfg.lr, cfg.rm.lr, cfg.kl_coef, cfg.seed, cfg.stop_after) == (1e-4, 7e-4, 0.25, 3, 0)
    assert cfg.run_dir == "/runs/r1" and cfg.name == "sentiment-tiny-s1"  # the saved name


def test_ppo_help_shows_precedence_and_nested_reward_flags(capsys):
    import ppo

    with pytest.raises(SystemExit):
        ppo.main(["--help"])
    out = capsys.readouterr().out
    assert "later wins" in out and "resolve_config" in out
    for flag in [
        "--rm.labels",
        "--rm.lr",
        "--rm.batch-size",
        "--rm.epochs",
        "--rm.num-comparisons",
    ]:
        assert flag in out, flag
    with pytest.raises(SystemExit, match="unknown option.*rm_lr"):
        presets.resolve_config(ppo.Config, {"resume": "/runs/old"}, {"rm_lr": 1e-4})


# --------------------------------------------------------------------------------------------------
# Stage by stage: a reward model's --model and --task carry into ppo.py; tiny's reward options


def test_ppo_takes_model_and_task_from_the_reward_model(tmp_path, monkeypatch, capsys):
    import gpt2
    import ppo
    import reward

    rm = reward.RewardModel(gpt2.GPT2(gpt2.PRESETS["tiny"]), base_model="tiny")
    rm.meta.update(task="descriptiveness", temperature=0.7, seed=1)
    reward.save_reward_model(rm, tmp_path / "rm.pt")
    monkeypatch.chdir(tmp_path)
    # neither given: both from rm.pt, and tiny's preset follows from the model (layer 3)
    cfg = presets.resolve_config(ppo.Config, {"reward_model": "rm.pt"})
    assert (cfg.model, cfg.task, cfg.lr) == ("tiny", "descriptiveness", 2e-4)
    assert "--model tiny, --task descriptiveness" in capsys.readouterr().out
    # stored absolute, so evaluate.py finds it from another directory
    assert cfg.reward_model == str(tmp_path / "rm.pt")
    # flags given win; a file that is no reward model is refused here, before anything loads
    cfg = presets.resolve_config(ppo.Config, {"reward_model": "rm.pt", "task": "sentiment"})
    assert (cfg.model, cfg.task) == ("tiny", "sentiment")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="--reward-model bad.pt is a text file, not a reward"):
        presets.resolve_config(ppo.Config, {"reward_model": "bad.pt"})


def test_reward_train_tiny_takes_the_demo_reward_options():
    import reward

    def parsed(*argv):
        a = cli.parse(reward.TrainArgs, list(argv), flat=("train",))
        presets.tiny_reward_options(a, list(argv))
        return a.train

    tiny = {k[3:]: v for k, v in presets.TINY_DEFAULTS.items() if k.startswith("rm.")}
    cfg = parsed("--model", "tiny")
    assert {k: getattr(cfg, k) for k in tiny} == tiny
    cfg = parsed("--model", "tiny", "--lr", "1e-3", "--epochs=2")  # given flags win
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (1e-3, 2, tiny["batch_size"])
    default = reward.TrainConfig()
    cfg = parsed("--model", "gpt2")  # other models: their own defaults
    assert (cfg.lr, cfg.epochs) == (default.lr, default.epochs)


# --------------------------------------------------------------------------------------------------
# The allowed values of every numeric option (presets.RANGES), checked before any work


def numeric_fields(cls, prefix=""):
    """(dotted name, field name, default) of every int / float field of the dataclass cls,
    nested ones included."""
    import dataclasses

    for f in dataclasses.fields(cls):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            yield from numeric_fields(type(default), f"{prefix}{f.name}.")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            yield prefix + f.name, f.name, default


def configs():
    import ppo
    import reward
    from machinery import comparisons

    return [ppo.Config, reward.TrainArgs, comparisons.SampleArgs, comparisons.EvalArgs]


def test_every_numeric_option_has_its_allowed_values():
    """A new int or float option must say what it allows (presets.RANGES): then a bad value is
    refused before any work, in one line, by every command that has it."""
    missing = [f"{c.__name__}.{key}" for c in configs() for key, name, _ in numeric_fields(c)
               if name not in presets.RANGES]  # fmt: skip
    assert missing == []
    for c in configs():  # and every default is allowed
        presets.check_values(c())


def test_every_preset_is_allowed():
    import ppo

    for task in presets.TASK_DEFAULTS:
        for model in ("gpt2", "tiny"):
            presets.resolve_config(ppo.Config, {"task": task, "model": model})


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("batch_size", -4, "--batch-size -4: must be an integer >= 1"),
        ("batch_size", 0, "--batch-size 0: must be an integer >= 1"),
        ("temperature", 0.0, "--temperature 0.0: must be a number > 0"),
        ("total_episodes", -1, "--total-episodes -1: must be an integer >= 1"),
        ("save_every", 0, "--save-every 0: must be an integer >= 1"),
        ("rm.epochs", -1, "--rm.epochs -1: must be an integer >= 1"),
        ("lr", -1.0, "--lr -1.0: must be a number > 0"),
        ("lr", float("nan"), "--lr nan: must be a number > 0"),
        ("gamma", 1.5, "--gamma 1.5: must be a number in [0, 1]"),
        ("rm.test_fraction", 1.0, "--rm.test-fraction 1.0: must be a number in [0, 1)"),
        ("seed", -1, "--seed -1: must be an integer in 0..2147483647"),
        ("micro_batch_size", "x", "--micro-batch-size 'x': must be 'auto' or an integer >= 1"),
        ("value_model", "both", "--value-model 'both': must be 'shared' or 'reward'"),
    ],
)
def test_ppo_refuses_a_value_out_of_range_by_its_flag(flag, value, allowed):
    import ppo

    with pytest.raises(cli.UsageError) as e:
        presets.resolve_config(ppo.Config, {"model": "tiny", flag: value})
    assert str(e.value) == allowed


def test_a_resumed_runs_bad_value_names_its_config_json():
    import ppo

    saved = asdict(presets.resolve_config(ppo.Config, {"model": "tiny"}))
    saved["batch_size"] = -4
    with pytest.raises(cli.UsageError) as e:
        presets.resolve_config(ppo.Config, {"resume": "/runs/r1"}, saved)
    assert str(e.value) == (
        "--batch-size -4 (from /runs/r1/config.json): must be an integer >= 1; give --batch-size "
        "to replace it"
    )
    cfg = presets.resolve_config(ppo.Config, {"resume": "/runs/r1", "batch_size": 8}, saved)
    assert cfg.batch_size == 8


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["sample", "--num-comparisons", "-5"], "--num-comparisons -5: must be an integer >= 1"),
        (["sample", "--n-samples", "1"], "--n-samples 1: must be an integer in 2..9"),
        (["train", "--epochs", "-1"], "--epochs -1: must be an integer >= 1"),  # flat: no rm.
        (["train", "--normalize-samples", "1"], "--normalize-samples 1: must be an integer >= 2"),
        (["eval", "--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
    ],
)
def test_reward_commands_refuse_a_value_out_of_range(tmp_path, monkeypatch, argv, allowed):
    import reward

    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.UsageError) as e:
        reward.main(argv + ["--model", "tiny"] * (argv[0] != "eval"))
    assert str(e.value) == allowed
    assert list(tmp_path.iterdir()) == []


def test_offered_commands_run_from_the_users_folder(tmp_path, monkeypatch):
    # the checkout's root: the script's name; elsewhere: a path that reaches it from there
    root = Path(cli.__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    assert cli.rerun("ppo.py", ["--model", "tiny"]) == "python ppo.py --model tiny --overwrite"
    assert cli.rerun("reward.py train", ["--x"], "") == "python reward.py train --x"
    monkeypatch.chdir(tmp_path)
    command = cli.rerun("ppo.py", ["--model", "tiny"])
    script = command.split()[1]
    assert (tmp_path / script).resolve() == root / "ppo.py"
    assert cli.script_path("docs/frontier.py") in (
        os.path.relpath(root / "docs/frontier.py"),
        str(root / "docs/frontier.py"),
    )


def test_cpu_device_reuses_freed_memory():
    # glibc: once the heap has grown to the work's peak, a freed 200 MB tensor's pages serve the
    # next one, instead of 49,000 fresh pages (a page fault and the kernel zeroing each) every time.
    # How many rounds the heap takes to get there varies (small blocks land between the big ones
    # and fragment it), so: within 20 rounds, 3 in a row with no fresh pages; without it, every
    # round after the first few faults in both tensors again
    code = """if True:
        import resource, sys, torch
        from machinery import cli
        took = cli.pick_device("cpu") == "cpu" and cli.reuse_freed_memory() if REUSE else None
        def work():
            x = torch.ones(50_000_000)  # 200 MB, and y as much
            y = x * 2
            return y.sum().item()
        faults = []
        for _ in range(20):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            work()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(took, *faults)
    """
    faults = {}
    for reuse in (False, True):
        out = subprocess.run(
            [sys.executable, "-c", code.replace("REUSE", str(reuse))],
            capture_output=True, text=True, check=True, cwd=ROOT,
        ).stdout.split()  # fmt: skip
        took, faults[reuse] = out[0], [int(f) for f in out[1:]]
    if took != "True":
        pytest.skip("not glibc: the allocator is left as it is")
    assert min(faults[False][4:]) > 2 * 40_000  # both 200 MB tensors on fresh pages, every round
    steady = [sum(faults[True][i : i + 3]) for i in range(len(faults[True]) - 2)]
    assert min(steady) < 1_000, faults[True]


def test_a_command_of_subcommands_starts_its_help_with_usage():
    r = subprocess.run(
        [sys.executable, str(ROOT / "reward.py"), "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines()[0] == "usage: reward.py {sample,label,train,eval} [options]"
    assert r.stdout.rstrip().endswith(
        "run `python reward.py COMMAND --help` for a command's options"
    )


@pytest.mark.parametrize("module", ["machinery.tasks", "machinery.labels"])
def test_a_module_run_as_a_program_names_itself_as_it_runs(module):
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0 and r.stdout.startswith(f"usage: python -m {module} ")
