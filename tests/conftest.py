"""Test setup shared by every test file.

- Without a GPU, Triton kernels run under the interpreter, which must be switched on before any
  kernel is defined.
- tiktoken's GPT-2 files: $TIKTOKEN_CACHE_DIR (CI sets it), else the checkout's .tiktoken_cache/
  when it exists (offline machines; the same folder bench/gpu_check.py reads), else tiktoken
  downloads them once.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def script_from(cwd, name: str = "ppo.py") -> str:
    """A stage file as the commands offered to a user in `cwd` name it (cli.script_path): the
    shorter of its relative and absolute paths."""
    return min(os.path.relpath(ROOT / name, cwd), str(ROOT / name), key=len)


sys.path.insert(0, str(ROOT))

_cache = ROOT / ".tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the environment is set)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gpt2_kernels.pytorch as pytorch_paths  # noqa: E402  (after TRITON_INTERPRET)


@pytest.fixture(params=["recompute", "keep"])
def logits_kept(request, monkeypatch):
    """Both backward paths of the PyTorch log-probs: the logits recomputed per chunk, or the
    forward's log p kept (gpt2_kernels/pytorch.py::KEEP_LOGITS_BYTES); yields whether they are
    kept."""
    keep = request.param == "keep"
    monkeypatch.setattr(pytorch_paths, "KEEP_LOGITS_BYTES", 2**40 if keep else 0)
    return keep


class ModelLoaded(Exception):
    """Raised where a model would load, under the `stop_at_model_load` fixture."""


@pytest.fixture
def stop_at_model_load(monkeypatch):
    """machinery.tasks.load_base_model raises ModelLoaded: a test runs a stage up to its first
    model (past every check before it) and no further; returns the exception class."""
    from machinery import tasks

    def load(*a, **k):
        raise ModelLoaded

    monkeypatch.setattr(tasks, "load_base_model", load)
    return ModelLoaded
