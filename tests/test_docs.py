"""The README and docs/ say what is true: links that resolve, commands and flags that exist, the Python the package
requires. (The README's F26 block is run command by command in test_term_and_format.py.)"""

import argparse
import re

import pytest

from facenext.cli import build_parser

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def code_in(text: str) -> list[str]:
    """Every code block and inline code span of a page, shell line continuations joined."""
    return [(block or span).replace("\\\n", " ") for block, span in CODE.findall(text)]


def known_flags() -> dict[str, set[str]]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in subparsers.choices.items()}


def test_the_readme_is_short_and_keeps_the_two_commands_ci_runs():
    text = (ROOT / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 200
    first_block = code_in(text[text.index("```bash") :])[0]
    assert [line.split("#")[0].split() for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in heading_anchors(linked.read_text()), f"{page.name}: {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_flag_and_make_target_named_exists(page):
    flags = known_flags()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for code in code_in(page.read_text()):
        for command, rest in re.findall(r"\bfacenext ([a-z][a-z-]*)([^;&#`\n]*)", code):
            assert command in flags, f"{page.name}: facenext {command}"
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                assert flag in flags[command], f"{page.name}: facenext {command} {flag}"
        for target in re.findall(r"\bmake ([a-z][\w-]*)", code):
            assert target in targets, f"{page.name}: make {target}"


def test_the_python_the_readme_names_is_the_one_pyproject_requires():
    required = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"Python {required} or newer" in readme
