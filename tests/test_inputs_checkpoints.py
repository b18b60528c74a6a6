"""Checkpoints users bring: every Hugging Face GPT-2 layout loads, and every config.json key either
gives transformers' logits or is refused by name.

Each test saves a tiny random GPT-2 with transformers (or huggingface_hub for the sharded .bin
layout transformers no longer writes) and compares our logits with transformers' on the same
tokens.
"""

import hashlib
import json
import warnings

import pytest
import torch

import gpt2
from gpt2 import GPT2
from machinery.hf import HF_CONFIG_ALIASES, HF_CONFIG_KEYS

transformers = pytest.importorskip("transformers")

V = 50257
BASE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=V)
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def make_hf(seed=0, cls=None, **overrides):
    """A random transformers GPT-2 (LM head unless cls says otherwise) with non-trivial LayerNorms
    and biases, and sharp attention (GPT-2's init gives near-uniform attention, under which a wrong
    attention scale would hide below the tolerance)."""
    torch.manual_seed(seed)
    attn = overrides.pop("attn_implementation", None)
    cfg = transformers.GPT2Config(**{**BASE, **NO_DROPOUT, **overrides})
    if attn:
        cfg._attn_implementation = attn
    hf = (cls or transformers.GPT2LMHeadModel)(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        for block in hf.transformer.h:
            block.attn.c_attn.weight.mul_(6.0)
    return hf


def tokens_and_mask():
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (7, 3, 12)]
    return gpt2.left_pad(seqs)


def hf_logits(hf, tokens, mask):
    pos = (mask.long().cumsum(1) - mask.long()).clamp(min=0)
    with torch.no_grad():
        out = hf(
            input_ids=tokens.masked_fill(~mask, 0), attention_mask=mask.long(), position_ids=pos
        )
    return out.logits


def assert_same_logits(ours: GPT2, hf, atol=1e-5):
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        a = ours(tokens, mask)[mask]
    b = hf_logits(hf, tokens, mask)[mask]
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def folder_digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


# --------------------------------------------------------------------------------------------------
# Layouts


def save_layout(hf, d, layout):
    """Write hf into folder d in one of the layouts users have."""
    from huggingface_hub import save_torch_state_dict

    if layout == "safetensors":
        hf.save_pretrained(d)
    elif layout == "sharded-safetensors":  # the failing input
        hf.save_pretrained(d, max_shard_size="5MB")
    else:
        # transformers 5 writes safetensors only; the .bin layouts are what older versions wrote
        # (huggingface_hub writes the same file names and index)
        d.mkdir(parents=True, exist_ok=True)
        hf.config.to_json_file(d / "config.json")
        state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
        if layout == "bin":
            torch.save(state, d / "pytorch_model.bin")
        else:
            save_torch_state_dict(state, d, max_shard_size="5MB", safe_serialization=False)
    return d


@pytest.mark.parametrize("layout", ["safetensors", "sharded-safetensors", "bin", "sharded-bin"])
def test_every_layout_loads_with_transformers_logits(tmp_path, layout):
    hf = make_hf()
    d = save_layout(hf, tmp_path / layout, layout)
    names = sorted(p.name for p in d.iterdir())
    if layout.startswith("sharded"):
        index = (
            "model.safetensors.index.json" if "safe" in layout else "pytorch_model.bin.index.json"
        )
        assert index in names and sum("-of-" in n for n in names) >= 2, names
    assert_same_logits(GPT2.from_pretrained(str(d)), hf)


def test_base_model_layout_without_prefix(tmp_path):
    """GPT2Model (no LM head) saves its tensors without the 'transformer.' prefix."""
    lm = make_hf()
    base = transformers.GPT2Model(lm.config).eval()
    base.load_state_dict(lm.transformer.state_dict())
    base.save_pretrained(tmp_path / "base", max_shard_size="5MB")
    assert_same_logits(GPT2.from_pretrained(str(tmp_path / "base")), lm)


def test_sharded_problems_are_named(tmp_path):
    d = save_layout(make_hf(), tmp_path / "c", "sharded-safetensors")
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=f"index.json.*{shard.name}.*missing"):
        GPT2.from_pretrained(str(d))
    (tmp_path / "elsewhere").rename(shard)
    # an index naming a file outside the folder, or a pickle in a safetensors index
    index = d / "model.safetensors.index.json"
    good = index.read_text()
    for bad in ("../x.safetensors", "/tmp/x.safetensors", "evil.bin"):
        obj = json.loads(good)
        obj["weight_map"]["transformer.wte.weight"] = bad
        index.write_text(json.dumps(obj))
        with pytest.raises(ValueError, match=r"index\.json: shard .* not a \.safetensors file"):
            GPT2.from_pretrained(str(d))
    index.write_text("{}")
    with pytest.raises(ValueError, match=r"index\.json: not a shard index.*weight_map"):
        GPT2.from_pretrained(str(d))


def test_sharded_bin_is_not_unpickled_freely(tmp_path):
    d = save_layout(make_hf(), tmp_path / "c", "sharded-bin")
    shard = sorted(d.glob("pytorch_model-*.bin"))[0]
    torch.save({"x": object()}, shard)  # a pickled object where tensors belong
    with pytest.raises(ValueError, match=f"{shard.name}: cannot read"):
        GPT2.from_pretrained(str(d))


# --------------------------------------------------------------------------------------------------
# config.json keys. Every key checked, with its verdict and a non-default value to try:
#   implemented: loading that value gives transformers' logits;
#   ignored:     the value changes nothing transformers' GPT-2 computes at inference either;
#   refused:     loading raises, naming the key.
# `hf` says how the value reaches transformers: as a GPT2Config argument ("arg"), or only in
# config.json ("json": transformers' model is built without it).

KEYS = {
    "n_layer": ("implemented", 3, "arg"),
    "n_head": ("implemented", 4, "arg"),
    "n_embd": ("implemented", 48, "arg"),
    "n_positions": ("implemented", 40, "arg"),
    "n_ctx": ("implemented", None, "n_ctx"),  # special case below
    "layer_norm_epsilon": ("implemented", 1e-2, "arg"),
    "n_inner": ("implemented", 40, "arg"),
    "activation_function": ("implemented", "relu", "arg"),  # every supported name: below
    "scale_attn_weights": ("implemented", False, "arg"),
    "scale_attn_by_inverse_layer_idx": ("implemented", True, "arg"),
    "tie_word_embeddings": ("implemented", False, "arg"),
    "vocab_size": ("refused", 50304, "json"),
    "add_cross_attention": ("refused", True, "json"),
    "quantization_config": (
        "refused",
        {"quant_method": "bitsandbytes", "load_in_8bit": True},
        "json",
    ),
    "model_type": ("refused", "gpt_neo", "json"),
    "reorder_and_upcast_attn": ("ignored", True, "eager"),  # only transformers' eager path reads it
    "resid_pdrop": ("ignored", 0.5, "arg"),
    "embd_pdrop": ("ignored", 0.5, "arg"),
    "attn_pdrop": ("ignored", 0.5, "arg"),
    "summary_first_dropout": ("ignored", 0.5, "arg"),
    "summary_type": ("ignored", "mean", "arg"),
    "summary_use_proj": ("ignored", False, "arg"),
    "summary_activation": ("ignored", "tanh", "arg"),
    "summary_proj_to_labels": ("ignored", False, "arg"),
    "initializer_range": ("ignored", 0.5, "arg"),
    "use_cache": ("ignored", False, "arg"),
    "bos_token_id": ("ignored", 0, "arg"),
    "eos_token_id": ("ignored", 0, "arg"),
    "pad_token_id": ("ignored", 50256, "arg"),
    "task_specific_params": ("ignored", {"text-generation": {"max_length": 50}}, "json"),
    "architectures": ("ignored", ["GPT2ForSequenceClassification"], "json"),
    "dtype": ("ignored", "float16", "json"),
    "torch_dtype": ("ignored", "float16", "json"),
    "transformers_version": ("ignored", "4.0.0", "json"),
    "_name_or_path": ("ignored", "someone/model", "json"),
    "id2label": ("ignored", {"0": "A", "1": "B", "2": "C"}, "json"),
    "label2id": ("ignored", {"A": 0, "B": 1, "C": 2}, "json"),
    "problem_type": ("ignored", "regression", "json"),
    "return_dict": ("ignored", False, "json"),
    "output_attentions": ("ignored", True, "json"),
    "output_hidden_states": ("ignored", True, "json"),
    "chunk_size_feed_forward": ("ignored", 4, "json"),
    "is_encoder_decoder": ("ignored", True, "json"),
}


def test_every_transformers_key_has_a_verdict():
    """The list above covers every key transformers' GPT2Config writes or aliases, and agrees with
    the table gpt2.py loads by (machinery/hf.py)."""
    cfg = transformers.GPT2Config()
    theirs = set(cfg.to_dict()) | set(transformers.GPT2Config.attribute_map.values())
    assert theirs <= set(KEYS), sorted(theirs - set(KEYS))
    assert set(KEYS) == set(HF_CONFIG_KEYS)
    for key, (verdict, _, _) in KEYS.items():
        assert HF_CONFIG_KEYS[key].startswith(verdict), (key, HF_CONFIG_KEYS[key])
    assert set(transformers.GPT2Config.attribute_map) == set(HF_CONFIG_ALIASES)


def save_with_key(tmp_path, key, value, how):
    """(folder, transformers model) for a config with key = value."""
    if how == "arg":
        hf = make_hf(**{key: value})
    elif how == "eager":
        hf = make_hf(**{key: value}, attn_implementation="eager")
    else:
        hf = make_hf()
    d = tmp_path / key
    hf.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    return d, hf


@pytest.mark.parametrize(
    "key", [k for k, v in KEYS.items() if v[0] != "refused" and v[2] != "n_ctx"]
)
def test_implemented_and_ignored_keys_give_transformers_logits(tmp_path, key):
    _, value, how = KEYS[key]
    d, hf = save_with_key(tmp_path, key, value, how)
    assert json.loads((d / "config.json").read_text())[key] == value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a key in the table is never "unknown"
        ours = GPT2.from_pretrained(str(d))
    assert_same_logits(ours, hf)


@pytest.mark.parametrize("name", list(gpt2.ACTIVATIONS))
def test_every_supported_activation_matches_transformers(tmp_path, name):
    d, hf = save_with_key(tmp_path, "activation_function", name, "arg")
    assert_same_logits(GPT2.from_pretrained(str(d)), hf)


def test_old_n_ctx_name(tmp_path):
    """Old configs name the context n_ctx; without n_positions it sizes the position embedding."""
    hf = make_hf(n_positions=40)
    hf.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["n_ctx"] = cfg.pop("n_positions")
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    ours = GPT2.from_pretrained(str(tmp_path / "c"))
    assert ours.config.n_positions == 40
    assert_same_logits(ours, hf)


def test_alias_names(tmp_path):
    """transformers' attribute_map names (hidden_size, ...) are read as the GPT-2 names."""
    hf = make_hf()
    hf.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    for alias, key in HF_CONFIG_ALIASES.items():
        cfg[alias] = cfg.pop(key)
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    assert_same_logits(GPT2.from_pretrained(str(tmp_path / "c")), hf)


@pytest.mark.parametrize("key", [k for k, v in KEYS.items() if v[0] == "refused"])
def test_refused_keys_are_named_and_nothing_is_changed(tmp_path, key):
    _, value, how = KEYS[key]
    d, _ = save_with_key(tmp_path, key, value, how)
    before = folder_digest(d)
    with pytest.raises(ValueError, match=f"config.json.*{key}"):
        GPT2.from_pretrained(str(d))
    assert folder_digest(d) == before


def test_unsupported_activation_is_refused(tmp_path):
    d, _ = save_with_key(tmp_path, "activation_function", "quick_gelu", "json")
    with pytest.raises(ValueError, match="activation_function = 'quick_gelu'.*supported: gelu_new"):
        GPT2.from_pretrained(str(d))


def test_unknown_key_warns_and_changes_nothing(tmp_path):
    d, hf = save_with_key(tmp_path, "rotary_dim", 8, "json")
    with pytest.warns(UserWarning, match="rotary_dim"):
        ours = GPT2.from_pretrained(str(d))
    assert_same_logits(ours, hf)


def test_untied_head_survives_a_state_dict_round_trip(tmp_path):
    """A separate lm_head is a real parameter: saved, reloaded, and used for the logits."""
    d, hf = save_with_key(tmp_path, "tie_word_embeddings", False, "arg")
    ours = GPT2.from_pretrained(str(d))
    assert not torch.equal(ours.lm_head_weight, ours.transformer.wte.weight)
    again = GPT2(ours.config)
    again.load_state_dict(ours.state_dict())
    assert_same_logits(again.eval(), hf)


def test_reward_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    """rm.pt loads with weights_only=True too: an object that needs unpickling is refused by name
    and the file is left as it was."""
    import reward

    path = tmp_path / "rm.pt"
    torch.save({"format": reward.CHECKPOINT_FORMAT, "payload": object()}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"rm\.pt: not a reward model checkpoint \(Unpickling"):
        reward.load_reward_model(path)
    assert path.read_bytes() == before
