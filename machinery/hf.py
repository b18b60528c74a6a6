"""
Hugging Face checkpoints, read and written: a GPT-2 folder's config.json and weights (whole or
sharded, safetensors or .bin) in, our GPT2Config's fields and a state dict out; and the same
layout written back atomically. gpt2.py's GPT2.from_pretrained and save_pretrained are the one
call each that use it.

This file never imports gpt2.py: it works on what the caller hands it (the model class, a config
object, a state dict), so the model file reads top to bottom without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from machinery import cli

HUB_REPOS = {
    name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
}


class CheckpointError(cli.UserError, ValueError):
    """A model that cannot be loaded as given: an unknown name, or a folder whose config or
    tensors GPT-2 cannot match. A ValueError, and a cli.UserError: a command says it in one line."""


class CheckpointMissing(cli.UserError, FileNotFoundError):
    """A checkpoint folder without a file it needs (config.json, the weights, a shard)."""


class DownloadFailed(cli.UserError, RuntimeError):
    """A hub model that is not in the Hugging Face cache and could not be downloaded."""


def resolve_checkpoint(name_or_dir: str) -> Path:
    """The checkpoint folder of name_or_dir: a local directory (a ppo.py run folder: its policy/),
    or a hub name downloaded (once, with a progress bar) into the Hugging Face cache. Raises
    CheckpointError for an unknown name, DownloadFailed when it is not cached and cannot be
    downloaded (offline, no network); each message says what would work."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        # whole or sharded weights (WEIGHT_FILES); a run folder has none of its own, only policy/
        has_weights = any((path / f).is_file() for pair in WEIGHT_FILES for f in pair)
        if not has_weights and (path / "policy" / "config.json").is_file():
            return path / "policy"  # a ppo.py run folder: its exported policy
        return path
    repo = HUB_REPOS.get(
        name_or_dir, name_or_dir if name_or_dir.startswith("openai-community/") else None
    )
    if repo is None:
        path_like = "/" in name_or_dir or name_or_dir.startswith((".", "~"))
        what = "no such folder" if path_like else "no such model"
        raise CheckpointError(f"{what} {name_or_dir!r}{_nearest(name_or_dir)}: {CHOICES}")
    # the standard cache: users who have GPT-2 don't download it again
    from huggingface_hub import constants, snapshot_download

    files = ["config.json", "model.safetensors"]
    try:
        return Path(snapshot_download(repo, allow_patterns=files, local_files_only=True))
    except Exception:
        pass  # not cached yet
    missing = f"{name_or_dir} ({repo}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    connect = "unset HF_HUB_OFFLINE and connect" if constants.HF_HUB_OFFLINE else "connect"
    fix = (
        f"{connect} once (it stays cached), give the path of a local folder in the Hugging Face "
        "layout (config.json + model.safetensors) instead, or set HF_HOME to a cache that holds "
        "it; on a CPU, --model tiny needs no download"
    )
    if constants.HF_HUB_OFFLINE:
        raise DownloadFailed(f"{missing} and downloads are off (HF_HUB_OFFLINE=1): {fix}")
    try:
        print(f"downloading {repo} into the Hugging Face cache (once)...", file=sys.stderr)
        return Path(snapshot_download(repo, allow_patterns=files))
    except Exception as e:
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise DownloadFailed(
            f"{missing}, and downloading it failed ({type(e).__name__}: {why}): {fix}"
        ) from None


# What --model takes, for the error that names a model that is none of them. "tiny" is gpt2.py's
# own preset (GPT2.from_pretrained builds it; no checkpoint).
MODEL_NAMES = ("tiny", *HUB_REPOS)
CHOICES = (
    f"give one of {', '.join(MODEL_NAMES)} (or openai-community/<name>), or the path of a folder "
    f"in the Hugging Face layout (config.json + model.safetensors or pytorch_model.bin)"
)


def _nearest(name: str) -> str:
    """' (did you mean X?)' for the model name nearest a mistyped one, else ''."""
    near = difflib.get_close_matches(name, MODEL_NAMES, n=1)
    return f" (did you mean {near[0]}?)" if near and near[0] != name else ""


# Every key of a Hugging Face GPT-2 config.json (transformers' GPT2Config, its base class's keys,
# and the older keys the hub's configs still carry), with what loading does with it. transformers'
# GPT-2 reads no other key, so a key outside this table changes nothing there either; we warn
# about it anyway. tests/test_inputs_checkpoints.py checks the table covers transformers'
# GPT2Config and that every verdict holds against transformers' logits; tests/test_export.py that
# an export (hf_config) writes every implemented key back.
IMPLEMENTED = "implemented"
HF_CONFIG_KEYS = {
    # the architecture: read into GPT2Config
    "n_layer": IMPLEMENTED,
    "n_head": IMPLEMENTED,
    "n_embd": IMPLEMENTED,
    "n_positions": IMPLEMENTED,
    "n_ctx": IMPLEMENTED + " (the old name of n_positions, used when n_positions is absent)",
    "layer_norm_epsilon": IMPLEMENTED,
    "n_inner": IMPLEMENTED,
    "activation_function": IMPLEMENTED + " (the names in gpt2.ACTIVATIONS; any other is refused)",
    "scale_attn_weights": IMPLEMENTED,
    "scale_attn_by_inverse_layer_idx": IMPLEMENTED,
    "tie_word_embeddings": IMPLEMENTED,
    "vocab_size": "refused unless 50257: the tokenizer, PAD_ID and the label files assume GPT-2's"
    " vocabulary",
    "add_cross_attention": "refused if true: cross-attention blocks belong to an encoder-decoder"
    " model, whose encoder this project does not have",
    "quantization_config": "refused: quantized weights are not GPT-2's tensors",
    "model_type": "refused unless 'gpt2'",
    # same logits whatever the value
    "reorder_and_upcast_attn": "ignored: an order of operations for mixed precision (transformers'"
    " eager path only); the same function",
    "resid_pdrop": "ignored: dropout, off at inference; this project never uses dropout, as"
    " lm-human-preferences",
    "embd_pdrop": "ignored: dropout (see resid_pdrop)",
    "attn_pdrop": "ignored: dropout (see resid_pdrop)",
    "summary_first_dropout": "ignored: dropout of GPT2DoubleHeadsModel's multiple-choice head",
    "summary_type": "ignored: GPT2DoubleHeadsModel's multiple-choice head, not the LM",
    "summary_use_proj": "ignored: GPT2DoubleHeadsModel's multiple-choice head, not the LM",
    "summary_activation": "ignored: GPT2DoubleHeadsModel's multiple-choice head, not the LM",
    "summary_proj_to_labels": "ignored: GPT2DoubleHeadsModel's multiple-choice head, not the LM",
    "initializer_range": "ignored: initialization only",
    "use_cache": "ignored: speed only (generate always uses a KV cache)",
    "bos_token_id": "ignored: transformers' generate settings; we use GPT-2's <|endoftext|>",
    "eos_token_id": "ignored: transformers' generate settings; we use GPT-2's <|endoftext|>",
    "pad_token_id": "ignored: used by transformers' classification heads; we mask pads ourselves",
    "task_specific_params": "ignored: transformers' pipeline defaults",
    "architectures": "ignored: which transformers class saved it; the GPT-2 tensors are the same",
    "dtype": "ignored: storage dtype; from_pretrained's dtype argument decides",
    "torch_dtype": "ignored: storage dtype (older name of dtype)",
    "transformers_version": "ignored: bookkeeping",
    "_name_or_path": "ignored: bookkeeping",
    "id2label": "ignored: classification heads only",
    "label2id": "ignored: classification heads only",
    "problem_type": "ignored: classification heads only",
    "return_dict": "ignored: transformers' output format",
    "output_attentions": "ignored: transformers' output format",
    "output_hidden_states": "ignored: transformers' output format",
    "chunk_size_feed_forward": "ignored: GPT-2's code does not read it",
    "is_encoder_decoder": "ignored: GPT-2's code does not read it (add_cross_attention decides)",
}
HF_CONFIG_ALIASES = {  # transformers' GPT2Config.attribute_map: other names for the same keys
    "hidden_size": "n_embd",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
    "max_position_embeddings": "n_positions",
}


def read_hf_config(path: Path, activations) -> dict:
    """gpt2.GPT2Config's fields (a keyword dict) from a Hugging Face config.json; activations: the
    activation names the model supports (gpt2.ACTIVATIONS). A key that would make transformers
    compute something other than what we compute is refused with a ValueError naming it
    (HF_CONFIG_KEYS); a missing file is a FileNotFoundError."""
    if not path.is_file():
        raise CheckpointMissing(
            f"{path}: missing; a checkpoint directory needs config.json next to its weights"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type is {raw['model_type']!r}, expected 'gpt2'")
    for alias, key in HF_CONFIG_ALIASES.items():
        if alias in raw and key not in raw:
            raw[key] = raw[alias]

    def refuse(key, why):
        raise CheckpointError(f"{path}: {key} = {raw[key]!r} {why}; this GPT-2 cannot match it")

    if raw.get("vocab_size", 50257) != 50257:
        refuse("vocab_size", "(GPT-2's tokenizer has 50257 tokens)")
    if raw.get("add_cross_attention", False):
        refuse("add_cross_attention", "(cross-attention needs an encoder)")
    if raw.get("quantization_config") is not None:
        refuse("quantization_config", "(quantized weights)")
    if raw.get("activation_function", "gelu_new") not in activations:
        refuse("activation_function", f"(supported: {', '.join(activations)})")
    unknown = sorted(set(raw) - set(HF_CONFIG_KEYS) - set(HF_CONFIG_ALIASES))
    if unknown:
        warnings.warn(f"{path}: keys GPT-2 does not read, ignored: {', '.join(unknown)}")
    try:
        config = dict(
            n_layer=int(raw["n_layer"]),
            n_head=int(raw["n_head"]),
            n_embd=int(raw["n_embd"]),
            n_positions=int(raw.get("n_positions", raw.get("n_ctx", 1024))),
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
            n_inner=None if raw.get("n_inner") is None else int(raw["n_inner"]),
            activation_function=raw.get("activation_function", "gelu_new"),
            scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: missing key {e.args[0]!r}; not a GPT-2 config") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a size is not a number ({e})") from None
    if config["n_embd"] % config["n_head"]:
        raise CheckpointError(
            f"{path}: n_embd = {config['n_embd']} is not divisible by n_head = {config['n_head']}"
        )
    return config


# The weight files of a Hugging Face checkpoint directory, in transformers' order of preference:
# (single file, index of a sharded one). safetensors first: it holds tensors only.
WEIGHT_FILES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def read_hf_weights(folder: Path) -> dict:
    """The raw tensors of a checkpoint directory: model.safetensors, pytorch_model.bin, or either
    sharded (model-0000N-of-0000M.safetensors + model.safetensors.index.json, the same for .bin).

    Each file is read by huggingface_hub's load_state_dict_from_file, the loader transformers
    itself builds on: it picks the safetensors reader or torch.load by file type, always with
    weights_only=True, so a .bin can hold tensors and plain containers only, never code. (Its
    load_torch_model would also walk the index, but loads into a module with names matching
    exactly; ours come with or without the 'transformer.' prefix, so we walk the index here.)"""
    from huggingface_hub import load_state_dict_from_file

    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            files = [folder / single]
            break
        if (folder / index).is_file():
            files = shard_files(folder / index)
            break
    else:
        names = ", ".join(n for pair in WEIGHT_FILES for n in pair)
        raise CheckpointMissing(f"{folder}: no weights; expected one of {names}")
    state = {}
    for f in files:
        try:
            state.update(
                load_state_dict_from_file(
                    f, map_location="cpu", weights_only=True, safe=f.suffix == ".safetensors"
                )
            )
        except Exception as e:
            raise CheckpointError(
                f"{f}: cannot read ({e}); the file is damaged, truncated or not a weights file"
            ) from None
    return state


def shard_files(index: Path) -> list[Path]:
    """The shard files a *.index.json names (its weight_map values), each checked to be a plain
    file name next to the index with the index's file type."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{index}: not a shard index ({type(e).__name__}: {e}); expected a JSON object with "
            f"a 'weight_map' of tensor name -> shard file"
        ) from None
    kind = ".safetensors" if index.name.startswith("model.safetensors") else ".bin"
    out = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(kind):
            raise CheckpointError(
                f"{index}: shard {name!r} is not a {kind} file name in this folder"
            )
        if not (index.parent / name).is_file():
            raise CheckpointMissing(f"{index}: names shard {name}, which is missing; download it")
        out.append(index.parent / name)
    return out


def load_model(folder: Path, model_class, config):
    """model_class(config) (a gpt2.GPT2 and its GPT2Config) holding the weights of the checkpoint
    folder, in their stored dtype, on the CPU. A config that ties the LM head to wte while the
    weights hold an lm_head.weight of other values is untied (a warning), as transformers loads
    it. Raises what read_hf_weights and checkpoint_to_state_dict raise."""
    state = read_hf_weights(folder)
    head = state.get("lm_head.weight")
    wte = state.get("transformer.wte.weight", state.get("wte.weight"))
    if config.tie_word_embeddings and head is not None and wte is not None and not _same(head, wte):
        # transformers (5.x) does not tie a head stored with values of its own: it uses them.
        # Dropping it (as older versions did) would give other logits than transformers'
        warnings.warn(
            f"{folder}: config.json ties the LM head to wte, but lm_head.weight is stored with "
            f"other values; using it, as transformers does (tie_word_embeddings = false)"
        )
        config = dataclasses.replace(config, tie_word_embeddings=False)
    with torch.device("meta"):  # no point initializing weights that are about to be overwritten
        model = model_class(config)
    model.load_state_dict(checkpoint_to_state_dict(state, model, folder), strict=True, assign=True)
    return model


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b.to(a.dtype))


def checkpoint_to_state_dict(state: dict, model, folder: Path) -> dict:
    """Map checkpoint names onto ours (the same names and layouts): the tensors of state (as read
    by read_hf_weights) under the names of the model's own state dict, every tensor's presence
    and shape checked (a ValueError naming it)."""
    # names come with or without the 'transformer.' prefix; attn.bias / masked_bias are old
    # causal-mask buffers
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state = {
        k: v
        for k, v in state.items()
        if not k.endswith(("attn.bias", "attn.masked_bias")) or ".c_" in k
    }
    out = {}
    for name, param in model.state_dict().items():
        key = name.removeprefix("transformer.")
        if key not in state:
            raise CheckpointError(
                f"{folder}: tensor {key!r} is missing from the checkpoint; "
                f"is it a GPT-2 checkpoint?"
            )
        t = state.pop(key)
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{folder}: tensor {key!r} has shape {tuple(t.shape)}, expected "
                f"{tuple(param.shape)} for this config"
            )
        out[name] = t.contiguous()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # a copy of wte (load_model unties one that is not)
    if state:
        warnings.warn(f"{folder}: ignoring tensors not in GPT-2: {', '.join(sorted(state)[:5])}")
    return out


# --------------------------------------------------------------------------------------------------
# Saving: the Hugging Face layout, written atomically


# GPT2Config fields that say how to run the model, not what it computes: not written.
RUN_ONLY_FIELDS = ("use_kernels",)


def hf_config(config, eot_id: int) -> dict:
    """config.json as transformers' GPT2LMHeadModel reads it, for a gpt2.GPT2Config (eot_id: GPT-2's
    <|endoftext|>, its BOS and EOS). Every field of the config but RUN_ONLY_FIELDS is written under
    its own name, each a key of HF_CONFIG_KEYS, so both loaders rebuild the model that was saved:
    read_hf_config gives the same fields back (an untied head, another MLP width or activation,
    other attention scaling; fixed GPT-2 values here made the export compute something else).
    Raises ValueError for a field with no config.json key, which the file would drop. Sorted on
    write, so the same model always gives the same bytes. Dropout values are GPT-2's released
    ones (we never use dropout, but someone fine-tuning the export with transformers gets GPT-2's
    defaults)."""
    fields = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in RUN_ONLY_FIELDS
    }
    dropped = sorted(set(fields) - set(HF_CONFIG_KEYS))
    if dropped:
        raise ValueError(
            f"GPT2Config fields {', '.join(dropped)} have no config.json key "
            f"(machinery/hf.py::HF_CONFIG_KEYS); an export would lose them"
        )
    return {
        **fields,  # n_inner None: 4 * n_embd; tie_word_embeddings false: lm_head.weight is stored
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": eot_id,
        "embd_pdrop": 0.1,
        "eos_token_id": eot_id,
        "model_type": "gpt2",
        "n_ctx": config.n_positions,  # the old name, for readers that predate n_positions
        "resid_pdrop": 0.1,
    }


def write_safetensors(tensors: dict, path) -> None:
    """Write tensors to a .safetensors file durably and atomically: a temporary file, fsync,
    rename. safetensors lays tensors out in a fixed order (by dtype, then name) and the header
    holds only {"format": "pt"} (what transformers expects), so equal tensors give equal bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        str(tmp),
        metadata={"format": "pt"},
    )
    os.chmod(tmp, 0o644)  # safetensors creates it private (0600); a model is made to be shared
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 with RENAME_EXCHANGE). False
    where the OS or file system cannot (then the caller swaps with two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) == 0


def write_checkpoint(folder, config: dict, tensors: dict, files: dict | None = None) -> Path:
    """Write a checkpoint folder: config (hf_config's dict) as config.json, tensors (a state dict)
    as model.safetensors, and `files` (name -> bytes: the tokenizer's, machinery/tokenizer.py)
    beside them. Returns the folder's absolute path (gpt2.save_pretrained).

    Atomic: the files are written and fsynced in a sibling temporary folder, which then replaces
    `folder` in one rename (an exchange where the OS has one). A process killed at any moment
    leaves either the previous `folder` whole or the new one whole, never a mix; a leftover
    temporary folder is removed by the next save.
    """
    folder = Path(folder).absolute()
    tmp = folder.with_name(f".{folder.name}.tmp")  # one writer per folder (a run owns its folder)
    old = folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():  # killed between the fallback's two renames below
        os.rename(old, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    for name, data in {"config.json": config, **(files or {})}.items():
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_safetensors(tensors, tmp / "model.safetensors")
    _fsync(tmp)
    if not folder.exists():
        os.rename(tmp, folder)
    elif _exchange(tmp, folder):
        shutil.rmtree(tmp)  # now the previous version
    else:  # two renames; a kill between them is repaired at the start of the next save
        os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old)
    _fsync(folder.parent)
    return folder
