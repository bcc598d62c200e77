"""The shell and JSON blocks of README.md and the docs pages say what works (issue 20: every
code block is run or checked): each ``make`` target exists, each ``romeways`` and
``python -m bench`` command line parses with the real parser, each path given to pytest exists,
each ``ROMEWAYS_TEST_*`` variable is one the tests read, each ``pip install`` extra is declared,
and each JSON block decodes. (The python blocks: tests/test_readme_blocks.py.)
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_readme_blocks import ROOT, doc_files

from romeways._cli import _parser  # the parser `romeways` runs with

SHELLS = ("sh", "bash")
# Commands shown but not checkable here: a loop over the reader's own module, and curl against
# a running app's port (that port is checked on the `romeways run` line before it).
NOT_CHECKED = ("for", "curl")


@dataclass
class Command:
    where: str
    words: list[str]
    env: dict[str, str]


def fenced_blocks(language: tuple[str, ...]) -> list[tuple[str, str]]:
    """(where, text) of every fenced block in one of ``language``, in every doc file."""
    found: list[tuple[str, str]] = []
    for path in doc_files():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = re.match(r"^```(\w+)\s*$", lines[i])
            if match is None:
                i += 1
                continue
            end = i + 1
            while not lines[end].startswith("```"):
                end += 1
            if match.group(1) in language:
                where = f"{path.relative_to(ROOT).as_posix()}:{i + 2}"
                found.append((where, "\n".join(lines[i + 1 : end])))
            i = end + 1
    return found


def commands() -> list[Command]:
    result: list[Command] = []
    for where, text in fenced_blocks(SHELLS):
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            env: dict[str, str] = {}
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words:
                result.append(Command(where, words, env))
    return result


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):(?!=)", text, re.M))


def problem(command: Command) -> str | None:
    """What is wrong with one command line, or None."""
    words = command.words
    tests_source = "\n".join(  # not this file: it names a variable no test reads
        p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name
    )
    for name in command.env:
        if name.startswith("ROMEWAYS_") and f'"{name}"' not in tests_source:
            return f"no test reads {name}"
    head = words[0]
    if head in NOT_CHECKED:
        return None
    if head == "make":
        missing = [t for t in words[1:] if t not in makefile_targets()]
        return f"no make target {missing}" if missing else None
    if head == "pip" and words[1:2] == ["install"]:
        extras = set(
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        )
        for spec in words[2:]:
            match = re.fullmatch(r"romeways\[([\w,-]+)\]", spec)
            if match is None or not set(match.group(1).split(",")) <= extras:
                return f"{spec!r} is not romeways with declared extras {sorted(extras)}"
        return None
    if head == "romeways":
        try:
            _parser().parse_args(words[1:])
        except SystemExit as exc:  # argparse's way out, for --version as for an error
            return None if exc.code == 0 else f"the romeways CLI refuses {words[1:]}"
        return None
    if head == ".venv/bin/pytest":
        args = [w for i, w in enumerate(words[1:]) if not w.startswith("-") and words[i] != "-k"]
        missing = [a for a in args if not (ROOT / a.split("::")[0]).exists()]
        return f"pytest paths that do not exist: {missing}" if missing else None
    if words[:3] == [".venv/bin/python", "-m", "bench"]:
        code = "import sys; from bench.__main__ import parse; parse(sys.argv[1:])"
        proc = subprocess.run(
            [sys.executable, "-c", code, *words[3:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return None if proc.returncode == 0 else proc.stderr.strip()[-500:]
    return f"{head!r}: no check for this command (add one to tests/test_doc_shell_blocks.py)"


def test_the_docs_have_shell_blocks() -> None:
    found = commands()
    assert len(found) >= 15, found
    assert {c.words[0] for c in found} >= {"make", "romeways", "pip", ".venv/bin/pytest"}


@pytest.mark.parametrize("command", commands(), ids=lambda c: f"{c.where}:{c.words[0]}")
def test_shell_command_works(command: Command) -> None:
    wrong = problem(command)
    assert wrong is None, f"{command.where}: {shlex.join(command.words)}: {wrong}"


def test_the_checks_catch_mistakes() -> None:
    bad = [
        ["make", "no-such-target"],
        ["romeways", "run"],
        ["pip", "install", "romeways[nosuchextra]"],
        [".venv/bin/pytest", "tests/no_such_dir", "-k", "tests/also_not_a_path"],
        [".venv/bin/python", "-m", "bench", "--only", "nosuchgroup"],
        ["rm", "-rf", "/"],
    ]
    for words in bad:
        assert problem(Command("test", words, {})) is not None, words
    assert problem(Command("test", ["make", "docs"], {"ROMEWAYS_TEST_NOPE": "1"})) is not None
    assert problem(Command("test", ["romeways", "--version"], {})) is None


@pytest.mark.parametrize("block", fenced_blocks(("json",)), ids=lambda b: b[0])
def test_json_block_decodes(block: tuple[str, str]) -> None:
    where, text = block
    for line in text.splitlines():  # one JSON document per line (log lines)
        assert isinstance(json.loads(line), dict), f"{where}: not a JSON object: {line}"
