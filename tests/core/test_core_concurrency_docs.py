"""docs/concurrency.md: its Python blocks pass mypy --strict and pyright strict, and its runnable
example runs and shows what the page says (the slow message finishes last)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "concurrency.md"


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    text = PAGE.read_text()
    assert text.startswith("# "), "a docs page starts with its h1 title"
    found = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(found) == 3
    directory = tmp_path_factory.mktemp("concurrency_docs")
    paths = []
    for i, code in enumerate(found):
        path = directory / f"concurrency_block_{i}.py"
        path.write_text(code)
        paths.append(path)
    return paths


def test_the_blocks_pass_mypy_strict(blocks: list[Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, blocks)],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT / "stubs")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_blocks_pass_pyright_strict(blocks: list[Path]) -> None:
    directory = blocks[0].parent
    config = {
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "extraPaths": [str(ROOT)],
        "stubPath": str(ROOT / "stubs"),
    }
    (directory / "pyrightconfig.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "pyright", "--outputjson", "--project", str(directory)]
    command += ["--pythonpath", sys.executable, str(directory)]
    proc = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    report: Any = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert errors == []


def test_the_example_runs_and_the_slow_message_finishes_last(blocks: list[Path]) -> None:
    proc = subprocess.run(
        [sys.executable, str(blocks[-1])], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"order 0 finished 50 of 50, in (\d+\.\d)s\n", proc.stdout)
    assert match is not None, proc.stdout
    assert float(match.group(1)) >= 2.0  # it did sleep its 2 s (and the others did not wait)


def test_the_config_errors_the_page_names(blocks: list[Path]) -> None:
    import romeways

    namespace: dict[str, Any] = {}
    lines = blocks[1].read_text().splitlines()
    exec("\n".join(lines[:2]), namespace)  # the import
    for line in lines[2:]:
        if line.strip():
            with pytest.raises(romeways.ConfigError, match=r"max_concurrency="):
                exec(line, namespace)
