"""Rules about the tests themselves: helpers come from conftest.py, so that no test module depends on another."""

import ast
from pathlib import Path


def test_test_modules_import_helpers_only_from_conftest():
    borrowed = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_"):
                borrowed.append(f"{path.name}: from .{node.module} import ...")
    assert borrowed == []


SRC = Path(__file__).parent.parent / "src" / "facenext"


def _family_decisions_outside_competitions() -> list[str]:
    """Every place outside ``competitions/`` that decides by the kind of competition itself instead of asking the
    family object: a term key written out, a family's name compared or read, a term's family string, the old
    ``verification``/``uses_pairs``/``submission_parts`` questions."""
    from facenext.competitions.terms import FAMILY_NAMES, TERMS

    keys = {key.lower() for key in TERMS}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "competitions" in path.relative_to(SRC).parts:
            continue
        where = path.relative_to(SRC.parent)
        for node in ast.walk(ast.parse(path.read_text())):
            line = f"{where}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in keys:
                found.append(f"{line}: term key {node.value!r}")
            elif isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value)
                if node.attr == "name" and owner.split(".")[-1] == "family":
                    found.append(f"{line}: {owner}.name")
                elif node.attr in ("family", "verification") and owner.split(".")[-1] == "term":
                    found.append(f"{line}: {owner}.{node.attr}")
                elif node.attr in ("uses_pairs", "submission_parts"):
                    found.append(f"{line}: .{node.attr}")
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = [o.value for o in operands if isinstance(o, ast.Constant) and o.value in FAMILY_NAMES]
                if names and any("family" in ast.unparse(o) or "verifier" in ast.unparse(o) for o in operands):
                    found.append(f"{line}: {ast.unparse(node)}")
    return found


def test_only_the_family_decides_by_the_kind_of_competition():
    """Issue 25: outside ``competitions/`` nothing names a family or a term; it asks ``layout.family`` (or
    ``family_of(term)``) and the terms' data (``DEFAULT_TERM``)."""
    assert _family_decisions_outside_competitions() == []


def test_imports_flow_one_way_between_competitions_and_data():
    """``data.layout`` (finding a competition) asks the families; the families build layouts from ``data.folders``
    alone, which knows no term: no import circle, not even a deferred one inside a function."""
    back = []
    for path in sorted([*(SRC / "competitions").glob("*.py"), SRC / "data" / "folders.py"]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = f"{path.parent.name}.{node.module}" if node.level == 1 else node.module or ""
                if (target.startswith("data.") and target != "data.folders") or path.name == "folders.py":
                    back.append(f"{path.relative_to(SRC)}:{node.lineno}: from {'.' * node.level}{node.module}")
    assert back == []
