"""gpt2.save_pretrained: the Hugging Face layout that transformers loads, the model that was loaded
or trained whatever its settings, byte-stable round trips, and atomic replacement (an exception or
a SIGKILL mid-export leaves the previous folder whole)."""

import dataclasses
import hashlib
import json
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

import gpt2
from gpt2 import GPT2, GPT2Config, left_pad
from machinery import hf as hf_io
from machinery.hf import HF_CONFIG_ALIASES, HF_CONFIG_KEYS, IMPLEMENTED
from machinery.tokenizer import HF_FILES

transformers = pytest.importorskip("transformers")
EXPORT_FILES = sorted(["config.json", "model.safetensors", *HF_FILES])


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
    assert sorted(p.name for p in folder.iterdir()) == EXPORT_FILES
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


# --------------------------------------------------------------------------------------------------
# The tokenizer beside the weights (issue 25): transformers' tools read an export as it is

TEXTS = [
    "Hello, my name is",
    "  two leading spaces, two trailing  ",
    "\n\nnewlines\n\tand tabs\t\r\nand CRLF",
    "héllo wörld, naïve café 🤖 日本語 한국어 עברית",
    "\u00a0no-break\u2009thin space, ﬁ ligature, a\u0301 combining, zero\u200bwidth",
    "it's they'll I'D we've 's  's",
    "x <|endoftext|> y",  # plain text, as gpt2.encode reads every text: not id 50256
    "<|endoftext|>",
    "",
]


def test_transformers_tokenizer_and_pipeline_read_an_export(tmp_path):
    """An export (a ppo.py run's policy/) carries GPT-2's tokenizer files: transformers'
    AutoTokenizer gives our ids for any text, and pipeline("text-generation") continues a prompt
    with our greedy tokens (without the files it returned the prompt unchanged). A folder without
    them (an older export) still loads in ours."""
    model = random_model(0)
    folder = gpt2.save_pretrained(model, tmp_path / "policy")
    assert sorted(p.name for p in folder.iterdir()) == EXPORT_FILES
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == 50257 and tok.eos_token_id == gpt2.EOT_ID
    assert tok.model_max_length == model.config.n_positions
    enc = gpt2.get_tokenizer()
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == gpt2.encode(text), text
        assert tok.decode(ids) == enc.decode(ids), text
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    for prompt in ("It was a warm day.", "  naïve 🤖\n"):
        out = pipe(prompt, max_new_tokens=8, do_sample=False, return_tensors=True)[0]
        theirs = out["generated_token_ids"]
        theirs = theirs.tolist() if hasattr(theirs, "tolist") else list(theirs)
        prompt_ids = gpt2.encode(prompt)
        new, _ = gpt2.generate(model, torch.tensor([prompt_ids]), None, 8, greedy=True)
        ours = new[0].tolist()  # transformers stops at <|endoftext|> (config.json's eos)
        ours = ours[: ours.index(gpt2.EOT_ID) + 1] if gpt2.EOT_ID in ours else ours
        assert len(ours) > 0 and theirs == prompt_ids + ours, prompt
        text = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
        assert text == prompt + enc.decode(ours)
    # an export written before the tokenizer files were: our loader never needed them
    for name in HF_FILES:
        (folder / name).unlink()
    tokens, mask = left_pad([gpt2.encode(t) for t in TEXTS[:4]])
    with torch.no_grad():
        torch.testing.assert_close(
            GPT2.from_pretrained(str(folder))(tokens, mask), model(tokens, mask)
        )


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


# --------------------------------------------------------------------------------------------------
# Every setting from_pretrained accepts survives an export (issue 24): one non-default value per
# implemented key of machinery/hf.py's table and per alias (n_ctx and the aliases name the key
# in the checkpoint's config.json only; the value is the canonical key's).

EXPORT_CASES = {
    "n_layer": 3,
    "n_head": 4,
    "n_embd": 48,
    "n_positions": 40,
    "n_ctx": 40,
    "layer_norm_epsilon": 1e-2,
    "n_inner": 40,
    "activation_function": "relu",
    "scale_attn_weights": False,
    "scale_attn_by_inverse_layer_idx": True,
    "tie_word_embeddings": False,
    "hidden_size": 48,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "max_position_embeddings": 40,
}
ALIAS_OF = {**HF_CONFIG_ALIASES, "n_ctx": "n_positions"}
ALL_AT_ONCE = {k: v for k, v in EXPORT_CASES.items() if k in HF_CONFIG_KEYS and k != "n_ctx"}


def test_the_cases_cover_every_key_from_pretrained_accepts():
    implemented = {k for k, v in HF_CONFIG_KEYS.items() if v.startswith(IMPLEMENTED)}
    assert set(EXPORT_CASES) == implemented | set(HF_CONFIG_ALIASES)


def hf_checkpoint(folder, overrides, renames=()):
    """A random transformers GPT-2 with `overrides` (GPT2Config arguments), saved by transformers
    into folder, its config.json keys renamed per `renames` (key -> alias). LayerNorms and biases
    are not 1s and 0s, and attention is sharp (GPT-2's init gives near-uniform attention, under
    which a wrong attention scale hides below the tolerance)."""
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(6.0)
    model.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    for key, alias in renames:
        raw[alias] = raw.pop(key)
    (folder / "config.json").write_text(json.dumps(raw))
    return model


def assert_export_is_the_model(tmp_path, original, folder):
    """Our load of folder, exported, reloads in ours and in transformers with the original's
    logits, and with every setting."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key of the export is unknown to our loader
        ours = GPT2.from_pretrained(str(folder))
        export = gpt2.save_pretrained(ours, tmp_path / "policy")
        ours_again = GPT2.from_pretrained(str(export))
    theirs_again = transformers.GPT2LMHeadModel.from_pretrained(str(export)).eval()
    assert ours_again.config == ours.config
    written = json.loads((export / "config.json").read_text())
    assert set(written) <= set(HF_CONFIG_KEYS)
    from safetensors import safe_open

    with safe_open(str(export / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not ours.config.tie_word_embeddings)
    tied = theirs_again.lm_head.weight.data_ptr() == theirs_again.transformer.wte.weight.data_ptr()
    assert tied == ours.config.tie_word_embeddings
    g = torch.Generator().manual_seed(1)
    tokens, mask = left_pad(
        [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (7, 3, 12)]
    )
    want = hf_logits(original, tokens, mask)[mask]
    with torch.no_grad():
        for got in (ours(tokens, mask), ours_again(tokens, mask)):
            torch.testing.assert_close(got[mask], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        hf_logits(theirs_again, tokens, mask)[mask], want, atol=1e-5, rtol=1e-5
    )
    return written


@pytest.mark.parametrize("key", [*EXPORT_CASES, "all"])
def test_an_export_is_the_model_that_was_loaded_whatever_its_settings(tmp_path, key):
    if key == "all":
        overrides, renames = ALL_AT_ONCE, []
    else:
        canonical = ALIAS_OF.get(key, key)
        overrides, renames = {canonical: EXPORT_CASES[key]}, [(canonical, key)] * (key in ALIAS_OF)
    original = hf_checkpoint(tmp_path / "start", overrides, renames)
    written = assert_export_is_the_model(tmp_path, original, tmp_path / "start")
    for k, v in overrides.items():
        assert written[k] == v, k


def test_a_head_stored_with_its_own_values_is_used_even_where_config_says_tied(tmp_path):
    """transformers (5.x) unties an LM head that the file stores with values other than wte's,
    whatever config.json says; so do we (with a warning), and the export says so. A stored head
    equal to wte stays tied."""
    original = hf_checkpoint(tmp_path / "start", {"tie_word_embeddings": False})
    raw = json.loads((tmp_path / "start" / "config.json").read_text())
    (tmp_path / "start" / "config.json").write_text(
        json.dumps({**raw, "tie_word_embeddings": True})
    )
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "start")).eval()
    assert theirs.lm_head.weight.data_ptr() != theirs.transformer.wte.weight.data_ptr()
    with pytest.warns(UserWarning, match="lm_head.weight is stored with other values"):
        ours = GPT2.from_pretrained(str(tmp_path / "start"))
    assert not ours.config.tie_word_embeddings
    gpt2.save_pretrained(ours, tmp_path / "untied")
    assert_export_is_the_model(tmp_path, original, tmp_path / "untied")

    from safetensors.torch import load_file, save_file

    tied = hf_checkpoint(tmp_path / "tied", {})
    state = load_file(tmp_path / "tied" / "model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    save_file(state, str(tmp_path / "tied" / "model.safetensors"), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GPT2.from_pretrained(str(tmp_path / "tied")).config.tie_word_embeddings
    assert_export_is_the_model(tmp_path, tied, tmp_path / "tied")


def test_every_model_setting_is_written_and_a_refused_one_stays_refused(tmp_path):
    """hf_config writes every GPT2Config field but how to run the model (use_kernels), and
    read_hf_config gives the same config back; a field with no config.json key is an error, not a
    silent loss; vocab_size, which gpt2.py refuses, is written as it is and refused on reload."""
    config = GPT2Config(**ALL_AT_ONCE, use_kernels="off")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf_io.hf_config(config, gpt2.EOT_ID)))
    read = hf_io.read_hf_config(path, gpt2.ACTIVATIONS)
    assert GPT2Config(**read, use_kernels="off") == config

    @dataclasses.dataclass
    class Wider(GPT2Config):
        rotary_dim: int = 0

    with pytest.raises(ValueError, match="rotary_dim have no config.json key"):
        hf_io.hf_config(Wider(), gpt2.EOT_ID)

    model = GPT2.from_config(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50304))
    folder = gpt2.save_pretrained(model, tmp_path / "policy")
    with pytest.raises(ValueError, match="config.json: vocab_size = 50304 .*GPT-2's tokenizer"):
        GPT2.from_pretrained(str(folder))
