"""Where the GPT-2 tokenizer's files come from (machinery/tokenizer.py): with TIKTOKEN_CACHE_DIR
unset, the checkout's .tiktoken_cache/ when it exists; with no files and no network, one line
that says what to do, not a traceback. Each case runs in a fresh process with no network (a proxy
that refuses) and the checkout's folder pointed at a temporary one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gpt2
from machinery import tokenizer

ROOT = Path(__file__).resolve().parent.parent


def run_offline(tmp_path, checkout_cache: Path, code: str):
    """`code` in a fresh interpreter with tiktoken's cache unset, tokenizer.CHECKOUT_CACHE =
    checkout_cache, an empty temp directory (tiktoken's default cache) and no network."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR") and "proxy" not in k.lower()
    }
    (tmp_path / "tmp").mkdir(exist_ok=True)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, so every download fails
    env.update(TMPDIR=str(tmp_path / "tmp"), HTTPS_PROXY=closed, HTTP_PROXY=closed)
    prelude = (
        "import sys; from pathlib import Path; from machinery import tokenizer; "
        f"tokenizer.CHECKOUT_CACHE = Path({str(checkout_cache)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_checkouts_tiktoken_cache_is_used_when_the_variable_is_unset(tmp_path):
    cache = tmp_path / "checkout" / ".tiktoken_cache"
    cache.mkdir(parents=True)
    for name in os.listdir(tokenizer.cache_folder()):  # conftest.py found the files for us
        shutil.copy(Path(tokenizer.cache_folder()) / name, cache / name)
    r = run_offline(
        tmp_path,
        cache,
        "import os, gpt2\n"
        "print(gpt2.encode('Hello, naïve world 🤖'))\n"
        "print(os.environ['TIKTOKEN_CACHE_DIR'])\n"
        "print(sorted(tokenizer.hf_tokenizer_files(64)))\n",
    )
    assert r.returncode == 0, r.stderr
    ids, folder, files = r.stdout.splitlines()
    assert ids == str(gpt2.encode("Hello, naïve world 🤖")) and folder == str(cache)
    assert files == str(sorted(tokenizer.HF_FILES))


def test_without_the_files_a_command_says_what_to_do_in_one_line(tmp_path):
    missing = tmp_path / "checkout" / ".tiktoken_cache"  # not made
    script = str(ROOT / "gpt2.py")
    r = run_offline(
        tmp_path,
        missing,
        "import runpy\n"
        f"sys.argv = [{script!r}, '--model', 'tiny', '--max-new-tokens', '2']\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: tiktoken's GPT-2 files are not")
    assert f"Put them in {missing}/ (or a folder named by TIKTOKEN_CACHE_DIR)" in line
    for url, _ in tokenizer.GPT2_FILES.values():
        assert url in line
