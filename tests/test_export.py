"""gpt2.save_pretrained: the Hugging Face layout that transformers loads, byte-stable round trips,
and atomic replacement (an exception or a SIGKILL mid-export leaves the previous folder whole)."""

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import gpt2
from gpt2 import GPT2, GPT2Config, left_pad

transformers = pytest.importorskip("transformers")


def random_model(seed, n_embd=32):
    """A small random GPT-2 whose LayerNorms and biases are not 1s and 0s, so a mix-up shows."""
    torch.manual_seed(seed)
    model = GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=n_embd, n_positions=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def digest(folder: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def hf_logits(hf, tokens, mask):
    pos = (mask.long().cumsum(1) - mask.long()).clamp(min=0)
    with torch.no_grad():
        return hf(
            input_ids=tokens.masked_fill(~mask, 0), attention_mask=mask.long(), position_ids=pos
        ).logits


def test_transformers_loads_the_tiny_export_with_our_logits(tmp_path):
    ours = GPT2.from_pretrained("tiny")
    folder = gpt2.save_pretrained(ours, tmp_path / "policy")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in names  # tied: transformers rebuilds it from wte
    assert names == set(ours.state_dict())
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (9, 3, 14)]
    tokens, mask = left_pad(seqs)
    with torch.no_grad():
        diff = (ours(tokens, mask) - hf_logits(hf, tokens, mask))[mask].abs().max().item()
    assert diff < 1e-4, diff
    # greedy continuations agree token for token
    prompt = torch.tensor([seqs[0]])
    new, _ = gpt2.generate(ours, prompt, None, 8, greedy=True)
    hf_new = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert new[0].tolist() == hf_new[0, prompt.size(1) :].tolist()


def test_round_trip_is_byte_stable(tmp_path):
    a = gpt2.save_pretrained(random_model(0), tmp_path / "a")
    b = gpt2.save_pretrained(GPT2.from_pretrained(str(a)), tmp_path / "b")
    assert digest(a) == digest(b)
    # and through transformers: its weights, written back by us, give the same bytes again
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(a))
    c = GPT2.from_config(GPT2.from_pretrained(str(a)).config)
    c.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"})
    assert digest(gpt2.save_pretrained(c, tmp_path / "c")) == digest(a)
    assert json.loads((a / "config.json").read_text())["n_embd"] == 32


def test_a_new_export_replaces_the_old_and_leaves_no_temporary_folder(tmp_path):
    gpt2.save_pretrained(random_model(0), tmp_path / "policy")
    folder = gpt2.save_pretrained(random_model(1, n_embd=16), tmp_path / "policy")
    assert GPT2.from_pretrained(str(folder)).config.n_embd == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_an_exception_mid_export_leaves_the_previous_folder(tmp_path, monkeypatch):
    before = digest(gpt2.save_pretrained(random_model(0), tmp_path / "policy"))

    def fail_halfway(tensors, path):  # config.json is written by now; the weights are not
        Path(path).with_name(f".{Path(path).name}.tmp").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("machinery.hf.write_safetensors", fail_halfway)
    with pytest.raises(OSError):
        gpt2.save_pretrained(random_model(1), tmp_path / "policy")
    assert digest(tmp_path / "policy") == before
    monkeypatch.undo()
    after = digest(gpt2.save_pretrained(random_model(1), tmp_path / "policy"))  # cleans up
    assert after != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_an_interrupted_fallback_swap_is_repaired(tmp_path, monkeypatch):
    """Where the OS has no atomic exchange, the swap is two renames; a kill between them leaves
    the old folder at .policy.old, which the next save puts back before anything else."""
    before = digest(gpt2.save_pretrained(random_model(0), tmp_path / "policy"))
    os.rename(tmp_path / "policy", tmp_path / ".policy.old")  # the state after the first rename

    def fail(tensors, path):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr("machinery.hf.write_safetensors", fail)
        with pytest.raises(OSError):
            gpt2.save_pretrained(random_model(1), tmp_path / "policy")
    assert digest(tmp_path / "policy") == before
    monkeypatch.setattr("machinery.hf._exchange", lambda a, b: False)  # the two-rename path itself
    after = digest(gpt2.save_pretrained(random_model(1), tmp_path / "policy"))
    assert after != before and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_sigkill_at_random_moments_leaves_a_whole_export(tmp_path):
    """A process exporting two models in turn is killed at random moments (a forked copy of this
    one, so no fresh interpreter per kill); the folder always holds exactly one of the two
    exports, byte for byte (each of which transformers loads, see the first test)."""
    models = [random_model(0), random_model(1)]
    refs = [digest(gpt2.save_pretrained(m, tmp_path / f"ref{i}")) for i, m in enumerate(models)]
    folder = tmp_path / "run" / "policy"
    folder.parent.mkdir()
    rng = random.Random(0)
    seen = set()
    for _ in range(8):
        pid = os.fork()
        if pid == 0:  # the child: export forever, until killed
            try:
                for i in range(10**9):
                    gpt2.save_pretrained(models[i % 2], folder)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if folder.exists():  # the very first export may not have finished
            seen.add(refs.index(digest(folder)))  # ValueError: a mix of the two, or a torn file
    assert folder.exists() and seen


def test_cli_exports_tiny_and_samples_from_the_export_and_a_run_folder(tmp_path, capsys):
    gpt2.main(["--model", "tiny", "--export", str(tmp_path / "run" / "policy")])
    # a run folder has a config.json of its own (ppo.py's), beside policy/
    (tmp_path / "run" / "config.json").write_text('{"task": "sentiment", "model": "tiny"}')
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    outs = []
    for model in (tmp_path / "run" / "policy", tmp_path / "run"):  # a run folder: its policy/
        capsys.readouterr()
        gpt2.main(["--model", str(model), "--prompt", "It was a warm day.", "--seed", "3"])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("=== 'It was a warm day.'\nIt was a warm day.")
    assert len(outs[0].strip().splitlines()[-1]) > len("It was a warm day.")
