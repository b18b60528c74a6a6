"""Test setup shared by every test file.

- Without a GPU, Triton kernels run under the interpreter, which must be switched on before any
  kernel is defined.
- tiktoken's GPT-2 files come from a shared/tiktoken_cache folder beside the checkout when one
  exists and TIKTOKEN_CACHE_DIR is unset (offline machines, CI).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_cache = ROOT.parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (after the environment is set)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
