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
