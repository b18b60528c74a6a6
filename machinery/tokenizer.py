"""
GPT-2's tokenizer files: where tiktoken's 'gpt2' encoding (gpt2.get_tokenizer) finds them, and the
same files written beside an export for transformers.

tiktoken builds the 'gpt2' encoding from the two files OpenAI released with GPT-2, encoder.json and
vocab.bpe (tiktoken_ext/openai_public.py), downloaded once into its cache: $TIKTOKEN_CACHE_DIR,
else a folder in the system's temp directory. Offline, with the variable unset, the checkout's
.tiktoken_cache/ (gitignored) is that cache when it exists; without the files and without network,
a command says in one line what to copy where.

Those two files are transformers' vocab.json and merges.txt byte for byte, so an export
(gpt2.save_pretrained: a ppo.py run's policy/, `gpt2.py --export`) carries them, and
transformers' AutoTokenizer and pipeline("text-generation") read the folder as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

CHECKOUT_CACHE = Path(__file__).resolve().parent.parent / ".tiktoken_cache"

_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# transformers' name of each file: (OpenAI's URL, the sha256 that tiktoken checks), as in
# tiktoken_ext/openai_public.py::gpt2
GPT2_FILES = {
    "vocab.json": (
        _URL + "encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "merges.txt": (
        _URL + "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
# what hf_tokenizer_files writes beside the weights
HF_FILES = (*GPT2_FILES, "tokenizer_config.json")
EOT = "<|endoftext|>"


def use_checkout_cache() -> None:
    """With no tiktoken cache folder set, use the checkout's .tiktoken_cache/ when it exists (set
    in the environment, so the processes a command starts find it too)."""
    unset = "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ
    if unset and CHECKOUT_CACHE.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(CHECKOUT_CACHE)


def cache_folder() -> str:
    """The folder tiktoken reads and fills (tiktoken/load.py::read_file_cached)."""
    default = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR", default))


def not_found(e: Exception) -> SystemExit:
    """The one line a command ends with when the files are neither cached nor downloadable: what
    to put where. tiktoken names each cached file by the sha1 of its URL."""
    named = [f"{url} as {hashlib.sha1(url.encode()).hexdigest()}" for url, _ in GPT2_FILES.values()]
    if type(e).__module__.split(".")[0] in ("requests", "urllib3"):
        why = f"{type(e).__name__}: no connection to openaipublic.blob.core.windows.net"
    else:
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    return SystemExit(
        f"error: tiktoken's GPT-2 files are not in {cache_folder() or '(no cache)'} and could not "
        f"be downloaded ({why}). Put them in {CHECKOUT_CACHE}/ (or a folder named by "
        f"TIKTOKEN_CACHE_DIR): copy them from tiktoken's cache on a machine that has one "
        f"($TIKTOKEN_CACHE_DIR, or {os.path.join(tempfile.gettempdir(), 'data-gym-cache')}), or "
        f"download {' and '.join(named)}"
    )


@functools.cache
def gpt2_encoding():
    """tiktoken's 'gpt2' encoding, loaded once; SystemExit (one line, not_found) without it."""
    use_checkout_cache()
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network (requests), a failed download's hash, an unwritable cache
        raise not_found(e) from None


def hf_tokenizer_files(n_positions: int) -> dict[str, bytes]:
    """transformers' GPT-2 tokenizer files (name -> bytes): vocab.json and merges.txt (OpenAI's
    files, from tiktoken's cache as gpt2_encoding reads them) and tokenizer_config.json. The
    same bytes every time, so an export stays byte-stable."""
    use_checkout_cache()
    from tiktoken.load import read_file_cached

    try:
        files = {name: read_file_cached(url, sha) for name, (url, sha) in GPT2_FILES.items()}
    except Exception as e:
        raise not_found(e) from None
    config = {
        "add_prefix_space": False,
        "bos_token": EOT,
        "eos_token": EOT,
        "errors": "replace",
        "model_max_length": n_positions,
        # every text is plain text, as gpt2.encode reads it: "<|endoftext|>" typed in a prompt is
        # its 8 ordinary tokens, never id 50256, so transformers gives the ids the model trained on
        "split_special_tokens": True,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": EOT,
    }
    files["tokenizer_config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return files
