"""No module of ours may hide an installed package, and transformers loads our export from the root.

Python puts the folder of the script it runs (or the current folder, for `python -c` and a shell in
the checkout) first on sys.path, so a top-level `kernels/` of ours was imported instead of Hugging
Face's `kernels` distribution, which transformers 5 imports when a model module loads. The check
covers the whole kind: every import name that one of our folders offers when it is first on
sys.path, against every installed distribution's import names and the standard library's.
"""

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folders that are first on sys.path for some way of starting our code: the root (the stage scripts,
# `python -c`, a shell in the checkout), tests/ (pytest's rootdir insertion), bench/ (its
# scripts), machinery/ (`python machinery/<file>.py`)
ENTRY_FOLDERS = ("", "tests", "bench", "machinery")


def import_names(folder: Path) -> set[str]:
    """The top-level names `import NAME` finds in folder: modules (NAME.py) and packages (folders
    holding Python files, with or without __init__.py: a namespace package shadows as well)."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("**/*.py"))}
    return {n for n in names if n.isidentifier()}


def shadowed(folder: Path) -> dict[str, list[str]]:
    """{our import name: what it hides} for the names in folder that an installed distribution or
    the standard library also provides."""
    installed = importlib.metadata.packages_distributions()  # import name -> distributions
    out = {}
    for name in sorted(import_names(folder)):
        hidden = list(installed.get(name, []))
        if name in sys.stdlib_module_names:
            hidden.append("the standard library")
        if hidden:
            out[name] = hidden
    return out


@pytest.mark.parametrize("folder", ENTRY_FOLDERS)
def test_no_module_of_ours_shadows_an_installed_package(folder):
    clashes = shadowed(ROOT / folder)
    assert not clashes, (
        f"{folder or 'the repository root'}: these names hide installed packages when the folder "
        f"is first on sys.path: {clashes}. Rename ours."
    )


def test_the_check_catches_a_clash(tmp_path):
    # a folder named after an installed distribution, a module named after another, one named
    # after the standard library, and one that is ours alone
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "x.py").write_text("")
    (tmp_path / "torch.py").write_text("")
    (tmp_path / "json.py").write_text("")
    (tmp_path / "surely_ours_alone.py").write_text("")
    (tmp_path / "data").mkdir()  # a folder without Python files is no package
    found = shadowed(tmp_path)
    assert set(found) == {"transformers", "torch", "json"}
    assert found["json"] == ["the standard library"]


def test_transformers_loads_our_export_from_the_root(tmp_path):
    """A user's check of the export, as they would run it: a Python process started in the
    repository root writes a policy the way ppo.py does (RUN_DIR/policy/), loads it with
    transformers.GPT2LMHeadModel.from_pretrained, and compares its logits with ours."""
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        import torch, transformers
        import gpt2
        from gpt2 import GPT2, GPT2Config

        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, use_kernels="off")
        ours = GPT2.from_config(cfg).eval()
        folder = gpt2.save_pretrained(ours, {str(tmp_path / "policy")!r})
        theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        tokens = torch.randint(0, cfg.vocab_size, (2, 9))
        with torch.no_grad():
            diff = (ours(tokens) - theirs(tokens).logits).abs().max().item()
        spec = importlib.util.find_spec("kernels")  # Hugging Face's, where installed
        print(transformers.__version__, diff, spec.origin if spec else None)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    version, diff, kernels_origin = out.stdout.split()[-3:]
    assert float(diff) < 1e-4, out.stdout
    if kernels_origin != "None":  # a transformers that imports `kernels` finds the real one,
        origin = Path(kernels_origin).resolve()  # installed (CI's venv lives inside the checkout)
        assert "site-packages" in origin.parts or not origin.is_relative_to(ROOT), origin
