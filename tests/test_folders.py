"""A command never silently replaces results (issue 25): ppo.py's run folder, `reward.py sample`,
`label` and `train --out`, evaluate.py's folders and `gpt2.py --export` refuse an output that holds
something, before any model loads, with one line naming what would work; --overwrite replaces it
(--resume continues a run); a failed start leaves no empty run folder; under torchrun every rank
gets rank 0's refusal. The refusals are real processes where cheap, and fail fast; one real run on
tiny (stopped, refused, resumed, refused, replaced) shows the whole path."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import script_from

import gpt2
import ppo
import reward
from machinery import labels, tasks

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--device", "cpu"]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def run(args, cwd=ROOT, **kw):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env(), cwd=cwd, **kw
    )


def snapshot(folder) -> dict:
    """Every file under folder: its bytes and modification time."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(r, *needles):
    """A refusal: non-zero exit, one line on stderr (no traceback) holding each needle."""
    err = r.stderr.strip()
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def fake_run(folder, *names) -> Path:
    """A run folder holding the files `names` (a trailing / makes a folder with a file in it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "x.json").write_text("{}\n")
        elif name == "metrics.jsonl":
            (folder / name).write_text("".join(f'{{"update": {u}}}\n' for u in range(1, 5)))
        else:
            (folder / name).write_text('{"task": "sentiment", "model": "tiny"}\n')
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: a refusal must come before."""

    def load(*a, **k):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(tasks, "load_base_model", load)
    monkeypatch.setattr(gpt2.GPT2, "from_pretrained", load)


# --------------------------------------------------------------------------------------------------
# ppo.py's run folder


def test_a_plain_start_in_a_folder_that_holds_a_run_is_refused(tmp_path):
    """The new user's case: the demo's finished folder and the README's next command (the same
    default --name); then a stopped stage-by-stage run and the same command again."""
    folder = fake_run(tmp_path / "runs" / "sentiment-tiny-s1", "config.json", "metrics.jsonl",
                      "checkpoint.pt", "summary.json", "policy/", "rm.pt")  # fmt: skip
    before = snapshot(folder)
    r = run([str(ROOT / "ppo.py"), "--model", "tiny", "--online", "--labeler", "sentiment"],
            cwd=tmp_path)  # fmt: skip
    refused(
        r,
        str(Path("runs/sentiment-tiny-s1")),
        f"`python {script_from(tmp_path)} --resume runs/sentiment-tiny-s1`",
        f"`python {script_from(tmp_path)} --model tiny --online --labeler sentiment --overwrite`",
    )
    assert snapshot(folder) == before


MARKERS = ["config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "policy/", "online/",
           "rm.pt", "labels.jsonl", "eval/"]  # fmt: skip


@pytest.mark.parametrize("marker", MARKERS)
def test_any_file_of_a_run_marks_its_folder(tmp_path, marker, no_model):
    folder = fake_run(tmp_path / "run", marker)
    before = snapshot(folder)
    with pytest.raises(SystemExit, match=r"already holds a run .*--overwrite") as e:
        ppo.main(["--model", "tiny", "--run-dir", str(folder), *FAST])
    assert ("--resume" in str(e.value)) == (marker == "config.json")  # only a run with a config
    assert ("cannot share one queue" in str(e.value)) == (marker == "online/")
    assert snapshot(folder) == before


def test_overwrite_deletes_the_old_runs_files_only(tmp_path, stop_at_model_load, capsys):
    """--overwrite: the old run's files go (before anything loads), the rest of the folder stays;
    a folder left empty goes too, so a start that fails after that leaves none."""
    folder = fake_run(tmp_path / "run", *MARKERS)
    (folder / "notes.txt").write_text("mine\n")

    with pytest.raises(stop_at_model_load):
        ppo.main(["--model", "tiny", "--run-dir", str(folder), "--overwrite", *FAST])
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    assert "--overwrite: deleted the old run's config.json" in capsys.readouterr().out
    (folder / "notes.txt").unlink()
    fake_run(folder, "config.json", "policy/")
    with pytest.raises(stop_at_model_load):
        ppo.main(["--model", "tiny", "--run-dir", str(folder), "--overwrite", *FAST])
    assert not folder.exists()


def test_overwrite_never_deletes_what_the_new_run_reads(tmp_path, no_model):
    folder = fake_run(tmp_path / "run", "config.json")
    rm = reward.RewardModel(gpt2.GPT2(gpt2.PRESETS["tiny"]), base_model="tiny")
    reward.save_reward_model(rm, folder / "rm.pt")  # a reward model: refused for the folder only
    before = snapshot(folder)
    args = ["--model", "tiny", "--run-dir", str(folder), "--overwrite", *FAST]
    with pytest.raises(SystemExit, match=r"would delete .*rm.pt, read by this run"):
        ppo.main(args + ["--reward-model", str(folder / "rm.pt")])
    with pytest.raises(SystemExit, match="--resume continues .* --overwrite deletes it"):
        ppo.main(["--resume", str(folder), "--overwrite"])
    assert snapshot(folder) == before


@pytest.mark.parametrize("bad", ["model", "reward model"])
def test_a_failed_start_leaves_no_folder(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    args = ["--model", "tiny", "--name", "x", *FAST]
    if bad == "model":
        with pytest.raises(ValueError, match="no such model 'no-such-model'"):
            ppo.main(args + ["--model", "no-such-model"])
    else:
        with pytest.raises(SystemExit, match="no such reward model"):
            ppo.main(args + ["--reward-model", str(tmp_path / "missing.pt")])
    assert not (tmp_path / "runs").exists()


def test_every_rank_gets_rank_0s_refusal(tmp_path):
    """Two processes joined as torchrun's workers (gloo, CPU). Rank 1 runs in another folder, as
    on another machine that cannot see rank 0's run folder: it still gets rank 0's refusal."""
    fake_run(tmp_path / "a" / "runs" / "x", "config.json", "checkpoint.pt")
    (tmp_path / "b").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, cwd in enumerate([tmp_path / "a", tmp_path / "b"]):
        e = dict(env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                 LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        cmd = [sys.executable, str(ROOT / "ppo.py"), "--model", "tiny", "--name", "x", *FAST]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    errors = [[x for x in err.splitlines() if x.startswith("error:")] for (_, err), _ in results]
    assert all(rc != 0 for _, rc in results), results
    assert len(errors[0]) == 1 and errors[0] == errors[1], errors
    assert errors[0][0].startswith("error: runs/x already holds a run"), errors
    assert not (tmp_path / "b" / "runs").exists()


# --------------------------------------------------------------------------------------------------
# One real run: stopped, refused, resumed, refused, evaluated again, replaced


def make_reward_model(path):
    rm = reward.RewardModel(tasks.load_base_model("tiny"), base_model="tiny")
    rm.meta = dict(task="sentiment", temperature=0.7, seed=1)
    reward.save_reward_model(rm, path)


def test_a_real_run_is_continued_or_replaced_never_cut(tmp_path):
    make_reward_model(tmp_path / "rm.pt")
    folder = tmp_path / "run"
    args = ["--model", "tiny", "--reward-model", str(tmp_path / "rm.pt"), "--total-episodes",
            "16", "--batch-size", "8", "--micro-batch-size", "8", "--noptepochs", "1",
            "--eval-episodes", "4", "--sample-every", "0", "--save-every", "1", "--run-dir",
            str(folder), *FAST]  # fmt: skip
    ppo.main(args + ["--stop-after", "1"])
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
    for state in ("started", "finished"):
        before = snapshot(folder)
        r = run([str(ROOT / "ppo.py"), *args])
        refused(r, f"`python ppo.py --resume {folder}`", " --overwrite`")
        assert snapshot(folder) == before, state
        if state == "started":
            ppo.main(["--resume", str(folder)])  # the deliberate continue path
            assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    # the end-of-run evaluation wrote eval/; evaluate.py writes its own eval-sentiment/ beside it
    key = (folder / "eval" / "key.json").read_bytes()
    r = run([str(ROOT / "evaluate.py"), str(folder), "--n", "4", *FAST])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (folder / "eval" / "key.json").read_bytes() == key
    # made another way there, it is refused, naming the commands that keep it or replace it ...
    before = snapshot(folder)
    r = run([str(ROOT / "evaluate.py"), str(folder), "--n", "6", *FAST])
    refused(r, "already holds an evaluation", f"--out {folder}/eval-sentiment-2", "--overwrite")
    assert snapshot(folder) == before
    # ... and --overwrite replaces it, as the run's own end replaces eval/ when resumed again
    mine = (folder / "eval-sentiment" / "key.json").read_bytes()
    r = run([str(ROOT / "evaluate.py"), str(folder), "--n", "6", "--overwrite", *FAST])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (folder / "eval-sentiment" / "key.json").read_bytes() != mine
    ppo.main(["--resume", str(folder)])
    assert (folder / "eval" / "key.json").read_bytes() != key
    # --overwrite: a new run from the start
    (folder / "notes.txt").write_text("mine\n")
    old = json.loads((folder / "summary.json").read_text())
    ppo.main(args + ["--overwrite", "--seed", "2"])
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((folder / "config.json").read_text())["seed"] == 2
    assert json.loads((folder / "summary.json").read_text()) != old
    assert (folder / "notes.txt").read_text() == "mine\n"


# --------------------------------------------------------------------------------------------------
# reward.py sample / label / train --out


def comparisons_file(path, n=3):
    rows = [
        dict(id=f"c-{i}", task="sentiment", query="It was", query_tokens=[1027, 373],
             samples=["good.", "bad."], sample_tokens=[[922, 13], [2089, 13]])
        for i in range(n)
    ]  # fmt: skip
    labels.write_comparisons(path, rows)
    return rows


def test_reward_sample_refuses_an_existing_file(tmp_path):
    out = tmp_path / "c.jsonl"
    comparisons_file(out)
    before = snapshot(tmp_path)
    cmd = [str(ROOT / "reward.py"), "sample", "--model", "no-such-model", "--out", str(out), *FAST]
    refused(run(cmd), f"--out {out} already exists", f"{' '.join(cmd[1:])} --overwrite")
    assert snapshot(tmp_path) == before  # and no model was looked for: the refusal came first
    cmd[cmd.index("no-such-model")] = "tiny"
    r = run(cmd + ["--num-comparisons", "2", "--n-samples", "2", "--overwrite"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(labels.read_comparisons(out)) == 2


def test_reward_label_never_destroys_a_labels_file(tmp_path):
    """`reward.py label` writes whole files (it has no continue path); a labels file at --out,
    e.g. a person's from label_tool.py, is refused, and replaced only with --overwrite."""
    cmp_path, out = tmp_path / "c.jsonl", tmp_path / "labels.jsonl"
    rows = comparisons_file(cmp_path)
    labels.append_jsonl(out, dict(rows[0], best=1, labeler="ann"))
    before = snapshot(tmp_path)
    cmd = [str(ROOT / "reward.py"), "label", "--comparisons", str(cmp_path), "--out", str(out)]
    refused(run(cmd), f"--out {out} already exists", "--overwrite")
    assert snapshot(tmp_path) == before
    r = run(cmd + ["--overwrite"])
    assert r.returncode == 0, r.stderr[-2000:]
    got = labels.read_labels(str(out))
    assert [r["labeler"] for r in got] == ["script:sentiment"] * 3


@pytest.mark.parametrize("existing", ["rm.pt", "rm.labels.jsonl"])
def test_reward_train_refuses_an_existing_checkpoint_or_its_labels(tmp_path, existing):
    (tmp_path / existing).write_bytes(b"results")
    before = snapshot(tmp_path)
    cmd = [str(ROOT / "reward.py"), "train", "--model", "no-such-model", "--task", "sentiment",
           "--out", str(tmp_path / "rm.pt"), *FAST]  # fmt: skip
    refused(run(cmd), f"{tmp_path / existing} already exists", "--overwrite")
    assert snapshot(tmp_path) == before
    r = run(cmd + ["--overwrite"])  # past the check: the model is looked for (and not found)
    refused(r, "no such model 'no-such-model'")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# gpt2.py --export


def test_export_replaces_an_earlier_export_only(tmp_path):
    folder = fake_run(tmp_path / "run", "config.json", "metrics.jsonl", "policy/")
    before = snapshot(folder)
    for extra in ([], ["--overwrite"]):  # a run folder is never replaced whole
        with pytest.raises(SystemExit, match=r"holds metrics.jsonl, policy/, which --export does"):
            gpt2.main(["--model", "tiny", "--export", str(folder), *extra])
    assert snapshot(folder) == before
    export = tmp_path / "export"
    gpt2.main(["--model", "tiny", "--export", str(export)])
    before = snapshot(export)
    r = run([str(ROOT / "gpt2.py"), "--model", "tiny", "--export", str(export)])
    held = "config.json, merges.txt, model.safetensors, tokenizer_config.json, vocab.json"
    refused(r, f"already holds {held}", f"--export {export} --overwrite")
    assert snapshot(export) == before
    gpt2.main(["--model", "tiny", "--export", str(export), "--overwrite"])
    assert ", ".join(sorted(os.listdir(export))) == held
    with pytest.raises(SystemExit, match="is a file; give a folder"):
        gpt2.main(["--model", "tiny", "--export", str(export / "config.json")])
