"""The connector in the guide (docs/writing-a-connector.md) is real: it passes mypy --strict,
pyright strict and the whole contract suite as an at-least-once connector."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from romeways.testing import check_connector

ROOT = Path(__file__).resolve().parent.parent.parent
GUIDE = ROOT / "docs" / "writing-a-connector.md"
PY = ("--pythonpath", sys.executable)


@pytest.fixture(scope="module")
def spool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's first Python block, as a module file."""
    guide = GUIDE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.DOTALL)
    path = tmp_path_factory.mktemp("guide") / "guide_spool_connector.py"
    path.write_text(blocks[0])
    return path


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_guide_connector_is_short(spool_file: Path) -> None:
    code = [line for line in spool_file.read_text().splitlines() if line.strip()]
    assert len(code) <= 50, f"the guide's connector grew to {len(code)} lines"


def test_guide_connector_passes_mypy_strict(spool_file: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(spool_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_guide_connector_passes_pyright_strict(spool_file: Path) -> None:
    config = spool_file.parent / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "extraPaths": [str(ROOT)]}))
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "-p", str(config), *PY, str(spool_file)],
        cwd=spool_file.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report: Any = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, [f"{d['range']['start']['line'] + 1}: {d['message']}" for d in errors]


def test_guide_connector_passes_the_contract(spool_file: Path, tmp_path: Path) -> None:
    guide = _load(spool_file)

    async def make_configs(queue_name: str) -> tuple[Any, Any]:
        return (
            guide.SpoolConnectorConfig(connector_name="spool", root=str(tmp_path)),
            guide.SpoolQueueConfig(connector_name="spool"),
        )

    asyncio.run(check_connector(guide.SpoolConnector, make_configs, redelivers_unacked=True))
