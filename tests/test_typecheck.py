"""The static promises, checked with the type checkers users run.

``typecheck/pass/*.py`` are realistic strict applications that must be clean; each line of
``typecheck/fail/*.py`` tagged ``# expect: code[, code]`` must get exactly those mypy error codes,
and no other line may get any. One mypy run covers every sample; one pyright run (strict mode)
covers the package, the pass samples (clean) and the fail samples (an error on each tagged line,
nowhere else).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPECHECK = ROOT / "typecheck"
PASS_FILES = sorted((TYPECHECK / "pass").glob("*.py"))
FAIL_FILES = sorted((TYPECHECK / "fail").glob("*.py"))

_EXPECT = re.compile(r"#\s*expect:\s*([a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s*$")
# path:line: error: message  [code]
_MYPY_LINE = re.compile(
    r"^(?P<path>[^:\n]+):(?P<line>\d+): error: (?P<msg>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$"
)

Key = tuple[str, int, str]  # (path relative to the repo, line, error code)


def expected_errors(files: list[Path]) -> Counter[Key]:
    """The ``# expect:`` tags of these files, one entry per code."""
    expected: Counter[Key] = Counter()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            match = _EXPECT.search(text)
            if match:
                for code in match.group(1).split(","):
                    expected[(rel, number, code.strip())] += 1
    return expected


def parse_mypy(output: str) -> tuple[Counter[Key], list[str]]:
    """mypy's errors as keys, and the error lines it could not attribute (no code, odd form)."""
    found: Counter[Key] = Counter()
    stray: list[str] = []
    for line in output.splitlines():
        if ": error: " not in line:
            continue
        match = _MYPY_LINE.match(line)
        if match is None or match.group("code") is None:
            stray.append(line)
            continue
        path = Path(match.group("path"))
        rel = (path if path.is_absolute() else ROOT / path).resolve().relative_to(ROOT)
        found[(rel.as_posix(), int(match.group("line")), match.group("code"))] += 1
    return found, stray


def compare(expected: Counter[Key], found: Counter[Key], stray: list[str], output: str) -> str:
    """An explanation of every difference, or "" when mypy said exactly what the tags say."""
    problems: list[str] = []
    missing = expected - found
    extra = found - expected
    for rel, line, code in sorted(missing):
        near = [f"{c} at line {n}" for (r, n, c) in extra if r == rel]
        where = f" (mypy reported {', '.join(near)} instead: misplaced?)" if near else ""
        problems.append(f"missing: {rel}:{line} expected [{code}]{where}")
    messages = {
        (m.group("path"), int(m.group("line")), m.group("code")): m.group("msg")
        for m in map(_MYPY_LINE.match, output.splitlines())
        if m is not None and m.group("code")
    }
    for rel, line, code in sorted(extra):
        msg = messages.get((rel, line, code), "")
        problems.append(f"unexpected: {rel}:{line} [{code}] {msg}")
    problems.extend(f"unattributed: {line}" for line in stray)
    return "\n".join(problems)


def test_samples_are_well_formed() -> None:
    assert PASS_FILES and FAIL_FILES
    names = [p.name for p in PASS_FILES + FAIL_FILES]
    # mypy names each sample by its file name alone, so they must be unique across both dirs.
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert not expected_errors(PASS_FILES), "pass samples must carry no '# expect:' tag"
    for path in FAIL_FILES:
        assert expected_errors([path]), f"{path.name} has no '# expect: code' tag"


@pytest.fixture(scope="module")
def mypy_output() -> str:
    """One mypy --strict run over every sample: its output."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--show-error-codes",
            "--no-pretty",
            "--no-error-summary",
            "--hide-error-context",
            "--no-color-output",
            *(str(p.relative_to(ROOT)) for p in PASS_FILES + FAIL_FILES),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr or proc.stdout
    return proc.stdout


def test_mypy_strict_over_samples_matches_expect_tags(mypy_output: str) -> None:
    found, stray = parse_mypy(mypy_output)
    problems = compare(expected_errors(FAIL_FILES), found, stray, mypy_output)
    assert not problems, f"mypy --strict over typecheck/ disagrees with the tags:\n{problems}"


def test_checker_reports_missing_extra_and_misplaced() -> None:
    """The comparison itself: a moved error is reported as missing and unexpected."""
    expected: Counter[Key] = Counter({("typecheck/fail/x.py", 3, "arg-type"): 1})
    output = (
        "typecheck/fail/x.py:4: error: Argument 1 has incompatible type  [arg-type]\n"
        "typecheck/fail/x.py:9: note: a note is ignored\n"
        "romeways/_app.py:1: error: broken  [misc]\n"
    )
    found, stray = parse_mypy(output)
    problems = compare(expected, found, stray, output)
    assert "missing: typecheck/fail/x.py:3 expected [arg-type]" in problems
    assert "misplaced?" in problems
    assert "unexpected: typecheck/fail/x.py:4 [arg-type]" in problems
    assert "unexpected: romeways/_app.py:1 [misc] broken" in problems
    assert not compare(expected, Counter(expected), [], "")


@pytest.fixture(scope="module")
def pyright_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], list[str]]:
    """One pyright run in strict mode over romeways/ and typecheck/: its errors by (file, line)."""
    config = {
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "extraPaths": [str(ROOT)],
        "stubPath": str(ROOT / "stubs"),
    }
    config_file = tmp_path_factory.mktemp("pyright") / "pyrightconfig.json"
    config_file.write_text(json.dumps(config))
    targets = [ROOT / "romeways", TYPECHECK / "pass", TYPECHECK / "fail"]
    command = [sys.executable, "-m", "pyright", "--outputjson", "--project", str(config_file)]
    command += ["--pythonpath", sys.executable, *map(str, targets)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    try:
        report: Any = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    assert report["summary"]["filesAnalyzed"] >= len(PASS_FILES) + len(FAIL_FILES), report
    by_line: dict[tuple[str, int], list[str]] = {}
    for diag in report["generalDiagnostics"]:
        if diag["severity"] != "error":
            continue
        rel = Path(diag["file"]).resolve().relative_to(ROOT).as_posix()
        line = int(diag["range"]["start"]["line"]) + 1
        by_line.setdefault((rel, line), []).append(f"{diag.get('rule', '')}: {diag['message']}")
    return by_line


def _unexpected(errors: dict[tuple[str, int], list[str]], under: str) -> list[str]:
    tagged = {(rel, line) for rel, line, _ in expected_errors(FAIL_FILES)}
    return [
        f"{rel}:{line}: {' | '.join(msgs)}"
        for (rel, line), msgs in sorted(errors.items())
        if rel.startswith(under) and (rel, line) not in tagged
    ]


def test_pyright_strict_package(pyright_errors: dict[tuple[str, int], list[str]]) -> None:
    problems = _unexpected(pyright_errors, "romeways/")
    assert not problems, "pyright strict over romeways/:\n" + "\n".join(problems)


def test_pyright_strict_samples(pyright_errors: dict[tuple[str, int], list[str]]) -> None:
    """Pass samples are clean; each tagged line of a fail sample is an error, nothing else."""
    problems = _unexpected(pyright_errors, "typecheck/")
    problems += [
        f"{rel}:{line}: pyright accepts this misuse"
        for rel, line, _ in sorted(expected_errors(FAIL_FILES))
        if (rel, line) not in pyright_errors
    ]
    assert not problems, "pyright strict over typecheck/:\n" + "\n".join(problems)


def test_pyright_reports_each_misuse_without_a_false_second_error(
    pyright_errors: dict[tuple[str, int], list[str]],
) -> None:
    """A misused decorator is one error: not also "untyped decorator obscures the function"."""
    false = [
        f"{rel}:{line}: {msg}"
        for (rel, line), msgs in sorted(pyright_errors.items())
        for msg in msgs
        if msg.startswith("reportUntypedFunctionDecorator")
    ]
    assert not false, "\n".join(false)


_IGNORE = re.compile(r"#\s*(type|pyright):\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")


def test_every_ignore_in_the_package_names_its_code_and_reason() -> None:
    """``# type: ignore[code]  # why`` only: no blanket ignores, none without a reason."""
    bad: list[str] = []
    for path in sorted((ROOT / "romeways").rglob("*.py")):
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            match = _IGNORE.search(text)
            if match and not (match.group("codes") and re.match(r"\s*#\s*\S", match.group("rest"))):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {text.strip()}")
    assert not bad, "ignores without [code] and '# reason':\n" + "\n".join(bad)


def docs_messages_table() -> dict[str, tuple[str, str]]:
    """The "Type checking" page's table (docs/type-checking.md): sample file -> (mypy cell,
    pyright cell)."""
    section = (ROOT / "docs" / "type-checking.md").read_text()
    table: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        if line.startswith("| `fail_"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            sample, mypy_cell, pyright_cell = cells
            table[sample.strip("`")] = (mypy_cell, pyright_cell)
    return table


def _fragments(cell: str) -> list[str]:
    return [f.strip() for f in re.split(r"\s*…\s*| ; ", cell) if f.strip()]


def test_docs_record_both_checkers_messages_for_every_fail_sample(
    mypy_output: str, pyright_errors: dict[tuple[str, int], list[str]]
) -> None:
    table = docs_messages_table()
    assert sorted(table) == sorted(p.name for p in FAIL_FILES), "one row per fail sample"
    problems: list[str] = []
    for name, (mypy_cell, pyright_cell) in sorted(table.items()):
        rel = f"typecheck/fail/{name}"
        said = "\n".join(line for line in mypy_output.splitlines() if line.startswith(rel))
        codes = re.findall(r"`\[([a-z-]+)\]`", mypy_cell)
        for code in codes:
            if f"[{code}]" not in said:
                problems.append(f"{name}: mypy gives no [{code}]")
        for fragment in _fragments(re.sub(r"\s*`\[[a-z-]+\]`", "", mypy_cell)):
            if fragment not in said:
                problems.append(f"{name}: mypy does not say {fragment!r}:\n{said}")
        pyright_said = "\n".join(
            m.replace("\xa0", " ")
            for (r, _), msgs in pyright_errors.items()
            if r == rel
            for m in msgs
        )
        for fragment in _fragments(pyright_cell):
            if fragment not in pyright_said:
                problems.append(f"{name}: pyright does not say {fragment!r}:\n{pyright_said}")
    assert not problems, "docs/type-checking.md's table is out of date:\n" + "\n".join(problems)
