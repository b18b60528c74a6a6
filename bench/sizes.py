"""The reader's budgets: stage-file sizes, README words, top-level entries and import circles.

    python bench/sizes.py

A measurement, not a test: it prints each figure beside its budget and exits 1 when one is over.
Import circles are found on the graph of every import statement in our non-test Python files,
those inside functions (lazy imports) and under `if __name__ == "__main__":` included.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"ppo.py": 500, "reward.py": 600, "gpt2.py": 700, "label_tool.py": 900}
README_WORDS = 2500
TOP_LEVEL = 14
PPO_MATH = ("whiten", "compute_rewards", "compute_gae", "ppo_policy_loss", "value_loss")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.splitlines() if (ROOT / p).exists()]


def module_name(path: str) -> str:
    """gpt2.py -> gpt2; machinery/tasks.py -> machinery.tasks; a package's __init__: the package."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str, ours: set[str]) -> set[str]:
    """Our modules that the file at path imports anywhere in it (lazy imports included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in ours:  # `import machinery.tasks` also names machinery
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = tracked()
    py = [p for p in files if p.endswith(".py") and not p.startswith("tests/")]
    rows, over = [], False

    def row(what, value, budget):
        nonlocal over
        ok = budget is None or value <= budget
        over |= not ok
        rows.append((what, value, "" if budget is None else f"<= {budget}", "" if ok else "OVER"))

    for name, budget in BUDGETS.items():
        row(name + " lines", len((ROOT / name).read_text().splitlines()), budget)
    ppo_lines = (ROOT / "ppo.py").read_text().splitlines()
    first = next(
        (i + 1 for i, s in enumerate(ppo_lines) if re.match(rf"def ({'|'.join(PPO_MATH)})\(", s)),
        10**9,
    )
    row("ppo.py: line of the first PPO math function", first, 150)
    words = len(re.findall(r"\S+", (ROOT / "README.md").read_text()))
    row("README.md words", words, README_WORDS)
    top = sorted({p.split("/")[0] for p in files if not p.startswith(".ci/")})
    row("top-level entries (git ls-files, .ci aside)", len(top), TOP_LEVEL)
    ours = {module_name(p) for p in py}
    ours |= {m.rpartition(".")[0] for m in ours if "." in m}  # packages without __init__
    graph = {m: set() for m in ours}
    for p in py:
        graph[module_name(p)] |= imports(ROOT / p, module_name(p), ours)
    found = circles(graph)
    row("import circles" + "".join(f"\n    {' <-> '.join(c)}" for c in found), len(found), 0)
    row(
        "non-test Python lines (all files)",
        sum(len((ROOT / p).read_text().splitlines()) for p in py),
        None,
    )
    for what, value, budget, flag in rows:
        print(f"{what:<50} {value:>7,} {budget:>8} {flag}")
    print(f"top level: {' '.join(top)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
