"""Ahead-of-time compile gate: every Triton kernel compiles for real GPUs, fits in shared memory,
and does not spill.

The interpreter tests (tests/test_kernels.py) check the math but cannot see GPU-only failures:
tl.dot shape rules, shared memory over the per-block limit, register spills, bf16 code paths. Here
every kernel × {sm_80 (A100), sm_90 (H100)} × {fp16, bf16, fp32} is compiled at the block sizes
the wrappers launch on a GPU (fp32, the exact-dot path with smaller tiles, because an fp32 model on
a GPU uses it), with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` and the
ptxas bundled in the triton wheel, no GPU needed. Checks: compilation succeeds; `metadata.shared` ≤
the architecture's per-block limit (sm_80: 163 KB, sm_90: 227 KB); the bundled `cuobjdump
-res-usage` reports no stack/local memory (register spills).

TRITON_INTERPRET=1 (set by conftest.py on CPU machines) turns @triton.jit into the interpreter,
which cannot be compiled, so the compiles run in a fresh subprocess without it: `python
tests/test_kernels_aot.py` (also usable by hand; it prints one JSON line per compile). Takes about
1-2 minutes on 2 cores the first time, seconds afterwards (triton's on-disk cache, ~/.triton/cache).
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block (bytes)
ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")


def jobs():
    """Every (kernel, arch, dtype, config) the wrappers can launch on a GPU: a list of plain
    dicts."""
    sys.path.insert(0, str(ROOT))
    attn = importlib.import_module("gpt2_kernels.triton_attention")
    lp = importlib.import_module("gpt2_kernels.triton_logprobs")
    out = []
    for cc in ARCHS:
        # fp32 models on a GPU take the exact-dot (ieee) path of the same kernels
        for dt in DTYPES + ("fp32",):
            for D in (64, 128):  # D = 16, 32 reuse the D = 64 tiles with less work
                BM, BN, w, s = attn.fwd_config(D, dt == "fp32")
                out.append(
                    dict(
                        kernel="triton_attention._attn_fwd",
                        cc=cc,
                        dtype=dt,
                        warps=w,
                        stages=s,
                        const=dict(BLOCK_M=BM, BLOCK_N=BN, HEAD_DIM=D, FP32_DOT=dt == "fp32"),
                    )
                )
                for name, config in (
                    ("_attn_bwd_dkdv", attn.bwd_dkdv_config),
                    ("_attn_bwd_dq", attn.bwd_dq_config),
                ):
                    BM, BN, w, s = config(D, dt == "fp32")
                    out.append(
                        dict(
                            kernel=f"triton_attention.{name}",
                            cc=cc,
                            dtype=dt,
                            warps=w,
                            stages=s,
                            const=dict(BLOCK_M=BM, BLOCK_N=BN, HEAD_DIM=D, FP32_DOT=dt == "fp32"),
                        )
                    )
                out.append(
                    dict(
                        kernel="triton_attention._attn_bwd_delta",
                        cc=cc,
                        dtype=dt,
                        warps=4,
                        stages=3,
                        const=dict(BLOCK_M=64, HEAD_DIM=D),
                    )
                )
            BR, BV, w = lp.bwd_config()  # writes the logits gradient in the GEMM dtype
            out.append(
                dict(
                    kernel="triton_logprobs._logprob_bwd_chunk",
                    cc=cc,
                    dtype=dt,
                    warps=w,
                    stages=3,
                    const=dict(BLOCK_R=BR, BLOCK_V=BV),
                )
            )
        # reads fp32 logits whatever the model dtype: one compile per arch
        BR, BV, w = lp.fwd_config()
        out.append(
            dict(
                kernel="triton_logprobs._logprob_fwd_chunk",
                cc=cc,
                dtype="fp32",
                warps=w,
                stages=3,
                const=dict(BLOCK_R=BR, BLOCK_V=BV),
            )
        )
    return out


def job_id(job):
    const = ",".join(f"{k}={v}" for k, v in job["const"].items() if k != "FP32_DOT")
    return f"{job['kernel']}-sm{job['cc']}-{job['dtype']}-{const}-w{job['warps']}s{job['stages']}"


# pointer arguments in the input dtype; every other pointer is fp32 except these
_DATA_PTRS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ", "G"}
_OTHER_PTRS = {
    "START": "*i32",
    "TARGETS": "*i64",
    "LSE": "*fp32",
    "DELTA": "*fp32",
    "Z": "*fp32",
    "M": "*fp32",
    "S": "*fp32",
    "TS": "*fp32",
    "ZY": "*fp32",
    "ENT": "*fp32",
    "GLOGP": "*fp32",
    "GENT": "*fp32",
}
_FLOATS = {"qk_scale", "sm_scale", "inv_temp"}


def _signature(fn, dtype, const):
    """Triton signature of `fn` as a launch would specialise it: unit D-strides become constexpr
    1, pointers and the other strides are 16-divisible (true for contiguous tensors with D ≥ 16
    and 128-column vocab chunks)."""
    sig, constexprs, divisible = {}, dict(const), []
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in _DATA_PTRS:
            sig[name] = f"*{dtype}"
            divisible.append(name)
        elif name in _OTHER_PTRS:
            sig[name] = _OTHER_PTRS[name]
            divisible.append(name)
        elif name in _FLOATS:
            sig[name] = "fp32"
        # stride along D: 1 after the wrapper's check
        elif name.startswith("stride") and name.endswith("d"):
            sig[name] = "constexpr"
            constexprs[name] = 1
        elif name.startswith("stride"):
            sig[name] = "i32"
            divisible.append(name)
        else:  # sizes and offsets (H, T, N, vc, v0)
            sig[name] = "i32"
    return sig, constexprs, divisible


def _cuobjdump():
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else None


def compile_job(job):
    """Compile one job; return it with ok/error, shared bytes, registers, stack and local bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    module, name = job["kernel"].split(".")
    fn = getattr(importlib.import_module(f"gpt2_kernels.{module}"), name)
    sig, constexprs, divisible = _signature(fn, job["dtype"], job["const"])
    target = GPUTarget("cuda", job["cc"], 32)
    # tt.divisibility=16 hints, as a real launch gives them (API of triton ≥ 3.3; skipped if
    # missing)
    try:
        backend = make_backend(target)
        attrs = {(fn.arg_names.index(n),): backend.parse_attr("D") for n in divisible}
    except Exception:
        attrs = None
    result = dict(job, id=job_id(job))
    try:
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs, attrs),
            target=target,
            options=dict(num_warps=job["warps"], num_stages=job["stages"]),
        )
    except Exception as e:  # a compile error is a test failure, reported with its message
        return dict(result, ok=False, error=f"{type(e).__name__}: {str(e)[-2000:]}")
    result.update(ok=True, shared=compiled.metadata.shared)
    tool = _cuobjdump()
    if tool is not None:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [tool, "-res-usage", f.name], capture_output=True, text=True
            ).stdout
        for key in ("REG", "STACK", "LOCAL"):
            m = re.search(rf"\b{key}:(\d+)", usage)
            result[key.lower()] = int(m.group(1)) if m else None
    return result


def run_all(workers=2):
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(compile_job, jobs())


# --------------------------------------------------------------------------------------------------
# pytest side: one subprocess compiles everything, each job is then its own test case


def _nvidia_backend_available():
    try:
        from triton.backends.nvidia import compiler  # noqa: F401

        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def aot_results():
    if not _nvidia_backend_available():
        pytest.skip(
            "this triton build has no NVIDIA backend (needs Linux x86-64 triton with bundled ptxas)"
        )
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, f"AOT compile worker crashed:\n{proc.stderr[-4000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["id"]: r for r in results}


@pytest.mark.parametrize("job", jobs(), ids=job_id)
def test_kernel_compiles_for_gpu(aot_results, job):
    r = aot_results[job_id(job)]
    assert r["ok"], f"{r['id']} does not compile for sm_{job['cc']}:\n{r['error']}"
    limit = SHARED_LIMIT[job["cc"]]
    assert r["shared"] <= limit, (
        f"{r['id']} needs {r['shared']} B shared memory > sm_{job['cc']} limit {limit} B"
    )
    if r.get("stack") is not None:  # cuobjdump present: spills show up as stack / local memory
        assert r["stack"] == 0 and r["local"] == 0, (
            f"{r['id']} spills registers: STACK={r['stack']} B, LOCAL={r['local']} B "
            f"(REG={r['reg']})"
        )


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit(
            "run with TRITON_INTERPRET=0: the interpreter's @triton.jit functions cannot be "
            "compiled"
        )
    for res in run_all():
        print(json.dumps(res), flush=True)
