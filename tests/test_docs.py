"""The write-up in docs/ and README.md names functions as `file.py::name`: each must exist.

This keeps the docs from drifting when code is renamed or moved. A name is found when the file
defines it at module level (function, class or assignment) or, for `file.py::Class.member`, when
the class defines that method or field.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
REF = re.compile(r"([\w/]+\.py)::([\w.]+)")


def defined_names(path: Path) -> dict[str, ast.AST]:
    """Module-level functions, classes and assigned names of a Python file."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names.update({t.id: node for t in targets if isinstance(t, ast.Name)})
    return names


def has_member(cls: ast.AST, name: str) -> bool:
    for node in getattr(cls, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return True
    return False


REFS = sorted(
    {(m.group(1), m.group(2), doc.name) for doc in DOCS for m in REF.finditer(doc.read_text())}
    - {("file.py", "function", "algorithm.md")}  # the sentence that explains the notation
)


def test_docs_name_code():
    assert len(REFS) > 50  # the docs do point into the code


@pytest.mark.parametrize("file,name,doc", REFS)
def test_reference_exists(file, name, doc):
    path = ROOT / file
    assert path.is_file(), f"{doc} names {file}::{name}, but {file} does not exist"
    top, *rest = name.split(".")
    node = defined_names(path).get(top)
    assert node is not None, f"{doc} names {file}::{name}, but {file} defines no {top}"
    if rest:
        assert has_member(node, rest[0]), f"{doc} names {file}::{name}: no member {rest[0]}"
