"""A new user's first hour (issue 25): an expected error is one line on stderr that says what would
work, with a non-zero status; only a bug has a traceback. The real commands run in subprocesses:
a model name that is none (every command that takes --model), no network for gpt2, an unknown
subcommand or flag, --online under torchrun, Ctrl-C during PPO (a real SIGINT); and --help's
groups and subcommand usage lines. cli.run_main itself is checked in-process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import script_from

import reward
from machinery import cli, tasks

ROOT = Path(__file__).resolve().parent.parent
CPU = ["--device", "cpu"]


def run(args, cwd, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=300)


def one_line(r, *needles, status=None) -> str:
    """The error of a finished command: a non-zero status (or `status`), exactly one line on
    stderr, no traceback, each needle in it."""
    err = r.stderr.strip()
    assert r.returncode != 0 if status is None else r.returncode == status, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --------------------------------------------------------------------------------------------------
# --model: a name that is no model, and gpt2 without network


@pytest.mark.parametrize(
    "args",
    [
        ["ppo.py", "--run-dir", "run", *CPU],
        ["reward.py", "sample", "--out", "c.jsonl", *CPU],
        ["reward.py", "train", "--task", "sentiment", "--out", "rm.pt", *CPU],
        ["gpt2.py", *CPU],
        ["-m", "machinery.tasks"],
    ],
    ids=["ppo", "reward-sample", "reward-train", "gpt2", "tasks"],
)
def test_a_model_name_that_is_none_is_one_line(tmp_path, args):
    script = [str(ROOT / args[0])] if args[0].endswith(".py") else args[:2]
    rest = args[1:] if args[0].endswith(".py") else args[2:]
    r = run([*script, *rest, "--model", "tinyy"], tmp_path)
    one_line(r, "error: no such model 'tinyy' (did you mean tiny?)", "tiny, gpt2, gpt2-medium",
             "a folder in the Hugging Face layout")  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, no run folder


def test_gpt2_without_network_is_one_line_that_says_how_to_fix_it(tmp_path):
    hf_home = tmp_path / "empty-hf-home"
    offline = dict(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home))
    for args in (["gpt2.py", *CPU], ["ppo.py", "--run-dir", "run", *CPU]):  # ppo: gpt2, the default
        r = run([str(ROOT / args[0]), *args[1:]], tmp_path, **offline)
        one_line(r, "gpt2 (openai-community/gpt2) is not in the Hugging Face cache",
                 str(hf_home), "HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE and connect once",
                 "local folder in the Hugging Face layout", "HF_HOME")  # fmt: skip
    assert not (tmp_path / "run").exists()
    # network on, but nothing answers: the download's progress line, then the error's one line
    r = run([str(ROOT / "gpt2.py"), *CPU], tmp_path, HF_HUB_OFFLINE="0", HF_HOME=str(hf_home),
            HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    downloading, error = r.stderr.strip().splitlines()
    assert downloading.startswith("downloading openai-community/gpt2"), downloading
    assert error.startswith("error: gpt2 (openai-community/gpt2) is not in the Hugging Face cache")
    assert "downloading it failed" in error and "connect once" in error, error


# --------------------------------------------------------------------------------------------------
# Commands and flags


def test_reward_unknown_command_and_flag(tmp_path):
    r = run([str(ROOT / "reward.py"), "trian"], tmp_path)
    err = one_line(r, status=2)
    assert err == (
        "reward.py: unknown command 'trian' (did you mean 'train'?); commands: sample, label, "
        "train, eval"
    )
    one_line(run([str(ROOT / "reward.py"), "--model", "tiny"], tmp_path),
             "give a command before its options", status=2)  # fmt: skip
    r = run([str(ROOT / "reward.py")], tmp_path)  # no command: the docstring
    assert r.returncode == 2 and "reward.py train" in r.stdout and "unknown" not in r.stderr
    r = run([str(ROOT / "reward.py"), "train", "--lr"], tmp_path)
    one_line(r, "reward.py train: error: argument --lr", "(see reward.py train --help)", status=2)
    r = run([str(ROOT / "ppo.py"), "--modle", "tiny"], tmp_path)
    one_line(r, "ppo.py: error: unrecognized arguments: --modle", "did you mean --model?", status=2)


def test_online_under_torchrun_is_said_once(tmp_path):
    """torchrun's two workers, as far as the check goes (it runs before any process joins): rank
    0 says it (and puts it into torchrun's report, its error file), rank 1 leaves quietly."""
    args = [str(ROOT / "ppo.py"), "--model", "tiny", "--online", *CPU]
    world = dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="9")
    report = tmp_path / "error.json"
    r0 = run(args, tmp_path, RANK="0", LOCAL_RANK="0", TORCHELASTIC_ERROR_FILE=str(report), **world)
    command = f"python {script_from(tmp_path)} --model tiny --online --device cpu"
    err = one_line(r0, "error: --online runs in one process", f"without torchrun: {command}")
    assert json.loads(report.read_text())["message"]["extraInfo"]["py_callstack"] == err
    r1 = run(args, tmp_path, RANK="1", LOCAL_RANK="1", **world)
    assert r1.returncode == 0 and r1.stderr == "", r1.stderr
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------
# Ctrl-C during PPO: a real SIGINT


def start_ppo(tmp_path, *extra):
    rm = reward.RewardModel(tasks.load_base_model("tiny"), base_model="tiny")
    rm.meta = dict(task="sentiment", temperature=0.7, seed=1)
    reward.save_reward_model(rm, tmp_path / "rm.pt")
    args = [str(ROOT / "ppo.py"), "--model", "tiny", "--reward-model", "rm.pt",
            "--total-episodes", "800", "--batch-size", "8", "--micro-batch-size", "8",
            "--noptepochs", "1", "--eval-episodes", "4", "--sample-every", "0", "--run-dir",
            "run", *CPU, *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`, nohup) has
    # SIGINT ignored, which the child would inherit, and Python then installs no KeyboardInterrupt
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=restore)  # fmt: skip


def interrupt_when(proc, ready, timeout=240):
    """SIGINT once ready() holds (the run still going); returns the finished process's result."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_ppo_names_the_last_checkpoint_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    proc = start_ppo(tmp_path, "--save-every", "1")
    saved = lambda: (run_dir / "checkpoint.pt").exists() and len(metrics.read_text().split()) >= 2
    r = interrupt_when(proc, saved)
    resume = f"continue with: python {script_from(tmp_path)} --resume run"
    err = one_line(r, "stopped (Ctrl-C); the last checkpoint is update ", resume, status=130)
    # the checkpoint it names is whole (never half written) and is the one on disk
    update = torch.load(run_dir / "checkpoint.pt", weights_only=True)["update"]
    assert f"update {update}/100 (run/checkpoint.pt)" in err, err


def test_ctrl_c_before_the_first_checkpoint_and_its_resume(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_ppo(tmp_path, "--save-every", "1000")
    r = interrupt_when(proc, lambda: (run_dir / "config.json").exists())  # setup done
    one_line(r, "stopped (Ctrl-C); no checkpoint saved yet; continue",
             f"python {script_from(tmp_path)} --resume run", status=130)  # fmt: skip
    assert not (run_dir / "checkpoint.pt").exists()
    # the command it gives works: PPO from update 0 with the same reward model
    r = run([str(ROOT / "ppo.py"), "--resume", "run", "--stop-after", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no checkpoint yet; PPO starts from update 0" in r.stdout
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# cli.run_main in-process: the kinds of ending


def ending(main, monkeypatch, capsys, **env):
    for k in ("RANK", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as e:
            cli.run_main(main)
    finally:
        signal.signal(signal.SIGINT, handler)  # run_main ignores a second Ctrl-C
    return e.value.code, capsys.readouterr().err


def raising(exc):
    def main():
        raise exc

    return main


def test_run_main_endings(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_interrupt_note", None)
    assert ending(lambda: 3, monkeypatch, capsys) == (3, "")
    assert ending(lambda: {"a": 1}, monkeypatch, capsys) == (0, "")  # ppo.main's summary
    bad = raising(cli.UserError("bad input; do this"))
    assert ending(bad, monkeypatch, capsys) == (1, "error: bad input; do this\n")
    usage = raising(cli.UsageError("bad flag"))
    assert ending(usage, monkeypatch, capsys) == (1, "error: bad flag\n")
    assert ending(usage, monkeypatch, capsys, RANK="1") == (0, "")  # rank 0 says it
    report = tmp_path / "error.json"
    code, err = ending(raising(SystemExit("error: x")), monkeypatch, capsys,
                       TORCHELASTIC_ERROR_FILE=str(report))  # fmt: skip
    assert (code, err) == (1, "error: x\n")
    assert json.loads(report.read_text())["message"]["message"] == "error: x"
    ctrl_c = raising(KeyboardInterrupt())
    assert ending(ctrl_c, monkeypatch, capsys) == (130, "stopped (Ctrl-C)\n")
    cli.on_interrupt(lambda: "saved X; continue with Y")
    said = "stopped (Ctrl-C); saved X; continue with Y\n"
    assert ending(ctrl_c, monkeypatch, capsys) == (130, said)
    assert ending(ctrl_c, monkeypatch, capsys, RANK="2") == (130, "")
    cli.on_interrupt(lambda: 1 / 0)  # a note that fails still gives the line
    assert ending(ctrl_c, monkeypatch, capsys) == (130, "stopped (Ctrl-C)\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.run_main(raising(ZeroDivisionError()))


def test_reward_train_ctrl_c_note_offers_the_labels_it_made(tmp_path):
    from machinery import comparisons

    a = reward.TrainArgs(out=str(tmp_path / "rm.pt"))
    started = time.time() - 1
    assert comparisons.train_interrupted(a, [], started).endswith("written when training ends)")
    made = tmp_path / "rm.labels.jsonl"
    made.write_text("{}\n")
    note = comparisons.train_interrupted(a, ["--model", "tiny"], started)
    assert f"labels it made are in {made}" in note
    assert note.endswith(f"python reward.py train --model tiny --labels {made}")


# --------------------------------------------------------------------------------------------------
# --help


def test_ppo_help_is_grouped(tmp_path):
    r = run([str(ROOT / "ppo.py"), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "usage: ppo.py [-h] [--OPTION VALUE ...]"  # the groups list the flags
    titles = [
        "the task and the models:",
        "PPO:",
        "The reward model's own options",
        "online label collection",
        "the run: seed, folder, resume, checkpoints, logging:",
        "performance:",
    ]
    at = [next(i for i, line in enumerate(lines) if line.startswith(t)) for t in titles]
    assert at == sorted(at), at  # in this order
    group = lambda flag: max(i for i in at if i < next(
        j for j, line in enumerate(lines) if line.startswith(f"  {flag}")))  # fmt: skip
    for flag, title in [("--model", 0), ("--lr", 1), ("--adam ", 1), ("--rm.lr", 2),
                        ("--labels-total", 3), ("--resume", 4), ("--save-every", 4),
                        ("--micro-batch-size", 5), ("--device", 5),
                        ("--precision", 5)]:  # fmt: skip
        assert group(flag) == at[title], (flag, lines[group(flag)])
    assert max(len(line) for line in lines) <= 100


def test_subcommand_usage_and_online_help(tmp_path):
    for command in ("sample", "label", "train", "eval"):
        r = run([str(ROOT / "reward.py"), command, "--help"], tmp_path)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: reward.py {command} [-h]")
        assert max(len(line) for line in r.stdout.splitlines()) <= 100
    r = run(["-m", "machinery.online", "--help"], tmp_path)
    assert r.returncode == 0 and "is not a command" in r.stdout
    assert "python ppo.py --online" in r.stdout and "label_tool.py --follow RUN_DIR" in r.stdout


def test_help_groups_from_comments():
    from dataclasses import dataclass

    @dataclass
    class Base:
        """the base"""

        a: int = 1
        """a"""
        # --help: speed
        b: int = 2
        """b: '# --help: not a comment' in a docstring changes nothing"""

    @dataclass
    class Top(Base):
        """top"""

        c: int = 3
        d: int = 4  # --help: speed

    assert cli.field_groups(Base) == {"a": "the base", "b": "speed"}
    assert cli.field_groups(Top) == {"c": "top", "d": "speed"}
    text = cli.make_parser(Top, order=("a",)).format_help()
    assert text.index("the base:") < text.index("top:") < text.index("speed:")
    assert text.index("--b") > text.index("speed:") and text.index("--d") > text.index("speed:")


# --------------------------------------------------------------------------------------------------
# A value out of range: one line naming the flag, before any work (no sampling, no model, no run
# folder); and a start that failed before its first update does not block the corrected one


@pytest.mark.parametrize("rm", [True, False], ids=["reward-model", "no-reward-model"])
def test_a_bad_ppo_value_is_refused_before_any_work(tmp_path, rm):
    if rm:  # with no --reward-model the run would first sample 800 comparisons
        reward.save_reward_model(tiny_rm(), tmp_path / "rm.pt")
    flags = ["--model", "tiny", "--name", "X", *CPU, *(["--reward-model", "rm.pt"] * rm)]
    for bad, allowed in [(["--batch-size", "-4"], "--batch-size -4: must be an integer >= 1"),
                         (["--temperature", "0"], "--temperature 0.0: must be a number > 0"),
                         (["--lr", "-1"], "--lr -1.0: must be a number > 0")]:  # fmt: skip
        r = run([str(ROOT / "ppo.py"), *flags, *bad], tmp_path)
        assert one_line(r) == f"error: {allowed}"
        assert "sample" not in r.stdout and not (tmp_path / "runs").exists()


def test_a_start_stopped_before_its_first_update_does_not_block_the_next(
    tmp_path, stop_at_model_load
):
    """config.json and an empty metrics.jsonl are all such a start leaves (with --reward-model):
    the corrected command starts over there, not refused with a --resume of the broken config."""
    import ppo

    folder = tmp_path / "runs" / "X"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"batch_size": -4}\n')
    (folder / "metrics.jsonl").write_text("")

    with pytest.raises(stop_at_model_load):  # past the folder's claim, to the first model
        ppo.main(["--model", "tiny", "--run-dir", str(folder), *CPU])
    assert not folder.exists()
    # a folder with metrics of an update holds a run: refused as before
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    (folder / "metrics.jsonl").write_text('{"update": 1}\n')
    with pytest.raises(SystemExit, match="already holds a run .*--resume"):
        ppo.main(["--model", "tiny", "--run-dir", str(folder), *CPU])


# --------------------------------------------------------------------------------------------------
# A file of the wrong kind: what it is, and what to give instead, in one line


def tiny_rm():
    rm = reward.RewardModel(tasks.load_base_model("tiny"), base_model="tiny")
    rm.meta.update(task="sentiment", temperature=0.7, seed=1)
    return rm


def label_lines(labeled=True, task="descriptiveness", n=4):
    """A labels file's lines (labeled) or a comparisons file's."""
    row = dict(task=task, query="q", query_tokens=[464, 3290, 13], samples=["a", "b"],
               sample_tokens=[[383, 13], [464, 13]])  # fmt: skip
    best = lambda i: dict(best=i % 2) if labeled else {}
    return "".join(json.dumps(dict(row, id=f"x{i}", **best(i))) + "\n" for i in range(n))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run folder's checkpoint.pt and rm.pt, a labels file and a comparisons file."""
    d = tmp_path_factory.mktemp("files")
    (d / "run").mkdir()
    reward.save_reward_model(tiny_rm(), d / "run" / "rm.pt")
    ckpt = dict(policy={"w": torch.zeros(2)}, optimizer={}, kl_ctl={"value": 0.15}, update=1)
    torch.save(ckpt, d / "run" / "checkpoint.pt")
    (d / "desc_labels.jsonl").write_text(label_lines())
    (d / "cmp.jsonl").write_text(label_lines(labeled=False))
    return d


def test_file_kinds(files):
    from machinery import labels

    assert labels._RM_MARK.decode() == reward.CHECKPOINT_FORMAT
    kinds = {"run/rm.pt": labels.REWARD_MODEL, "run/checkpoint.pt": labels.PPO_CHECKPOINT,
             "run": labels.RUN_FOLDER, "desc_labels.jsonl": labels.LABELS,
             "cmp.jsonl": labels.COMPARISONS, "missing.pt": labels.MISSING}  # fmt: skip
    assert {name: labels.file_kind(files / name) for name in kinds} == kinds
    openai = ROOT / "tests" / "fixtures" / "openai_best_of_4.json"
    assert labels.file_kind(openai) == labels.OPENAI_LABELS


def test_ppo_given_a_checkpoint_as_reward_model_names_the_runs_rm(files, tmp_path):
    """No --model: it used to fall back to gpt2 and say gpt2 is not cached."""
    r = run([str(ROOT / "ppo.py"), "--reward-model", str(files / "run" / "checkpoint.pt"),
             "--name", "wc1", *CPU], tmp_path)  # fmt: skip
    rm = files / "run" / "rm.pt"
    one_line(r, "error: --reward-model ", "checkpoint.pt is a ppo.py checkpoint",
             f"not a reward model checkpoint; its run's reward model is {rm}")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_ppo_given_labels_as_reward_model_says_how_to_train_one(files, tmp_path):
    r = run([str(ROOT / "ppo.py"), "--model", "tiny", "--reward-model",
             str(files / "desc_labels.jsonl"), *CPU], tmp_path)  # fmt: skip
    err = one_line(r, "desc_labels.jsonl is a labels file, not a reward model checkpoint",
                   "`python reward.py train --labels ", "--rm.labels ")  # fmt: skip
    assert "weights_only" not in err and "same base model" not in err
    assert list(tmp_path.iterdir()) == []


def test_reward_commands_given_the_wrong_kind_of_file(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rm, lab, cmp = files / "run" / "rm.pt", files / "desc_labels.jsonl", files / "cmp.jsonl"

    def error(*argv):
        assert reward.main([str(a) for a in argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        return err

    err = error("train", "--labels", str(rm), "--model", "tiny", *CPU)
    assert "rm.pt is a reward model" in err and "not a labels file" in err and "UTF-8" not in err
    err = error("train", "--labels", str(cmp), "--model", "tiny", *CPU)
    assert "is a comparisons file" in err and f"reward.py label --comparisons {cmp}" in err
    err = error("eval", "--reward-model", str(files / "run" / "checkpoint.pt"), "--labels", lab)
    assert "is a ppo.py checkpoint" in err and "its run's reward model is" in err
    err = error("label", "--comparisons", str(rm))
    assert "is a reward model" in err and "not a comparisons file" in err
    # labels of another task: the hint names a flag `reward.py eval` has (it has no --task)
    err = error("eval", "--reward-model", str(rm), "--labels", str(lab), *CPU)
    assert "not sentiment, the reward model's task" in err and "--reward-model of a" in err
    assert "--task" not in err
    # no labels and no task: which --task to give, and nothing about a trained reward model
    err = error("train", "--model", "tiny", *CPU)
    assert "no task given: give --task sentiment (or descriptiveness" in err
    assert "--labels FILE" in err and "trained reward model" not in err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_a_bad_value_before_touching_an_evaluation(tmp_path):
    # --n -3 --overwrite once deleted the earlier evaluation, then crashed in the sampling
    kept = tmp_path / "run" / "eval-sentiment" / "key.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    for flag, value in (("--n", "-3"), ("--batch-size", "0"), ("--show", "-1")):
        r = run(
            [str(ROOT / "evaluate.py"), str(tmp_path / "run"), flag, value, "--overwrite"], tmp_path
        )
        one_line(r, f"error: {flag} {value}: must be an integer >=")
        assert kept.read_text() == "{}"


def test_a_run_folder_whose_reward_model_the_flags_read_is_not_offered_overwrite(tmp_path):
    from types import SimpleNamespace

    from machinery import runs

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "rm.pt", "summary.json"):
        (folder / name).write_text("x")
    rm = SimpleNamespace(labels="")
    cfg = SimpleNamespace(resume=False, overwrite=False, model="tiny", query_data="", rm=rm,
                          reward_model=str(folder / "rm.pt"))  # fmt: skip
    refusal = runs.claim_folder(cfg, folder)
    assert "--resume" in refusal and "--overwrite" not in refusal, refusal
    assert f"start another run that reads {folder / 'rm.pt'}" in refusal
    cfg.reward_model = ""  # its own reward model not read: start over is offered
    assert "--overwrite" in runs.claim_folder(cfg, folder)


def test_a_torch_file_given_as_labels_is_named_for_what_it_is(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    for args in (["label_tool.py", "--stats", str(path)], ["-m", "machinery.labels", str(path)]):
        script = [str(ROOT / args[0]), *args[1:]] if args[0].endswith(".py") else args
        r = run(script, tmp_path)
        one_line(r, f"{path} is a", "not a JSON-lines file")
