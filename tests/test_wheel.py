"""The built wheel is what users install: it carries py.typed and every module (its inline types
are the stubs), and mypy --strict and pyright strict see romeways' types through it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "typecheck" / "pass" / "pass_typed_payload.py"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the source tree (the checkout stays clean),
    without build isolation: the dev environment has setuptools, so no download is needed."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "romeways", src / "romeways", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("romeways-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed (unpacked: it is pure Python) and this
    environment's packages (msgspec, typing-extensions) reachable through a .pth file, as a
    user's site-packages would be. Returns its python."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
    (Path(purelib) / "romeways-dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_has_py_typed_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "romeways/py.typed" in names
    sources = {
        p.relative_to(ROOT).as_posix()
        for pattern in ("*.py", "*.pyi")
        for p in (ROOT / "romeways").rglob(pattern)
        if "__pycache__" not in p.parts
    }
    assert sources - names == set(), "modules missing from the wheel"
    assert {"romeways/testing/__init__.py", "romeways/testing/_contract.py"} <= names
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"romeways", wheel.name.split("-py3")[0] + ".dist-info"}, top_level


def test_wheel_metadata(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    info = wheel.name.split("-py3")[0] + ".dist-info"
    metadata = archive.read(f"{info}/METADATA").decode()
    assert "Requires-Python: >=3.11" in metadata
    assert "License-Expression: MIT" in metadata.splitlines()  # SPDX, not the deprecated table
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("Requires-Dist: msgspec") for r in requires), requires
    assert any(r.startswith("Requires-Dist: typing-extensions") for r in requires), requires
    assert any("aiokafka" in r and 'extra == "kafka"' in r for r in requires), requires
    assert any("opentelemetry-api" in r and 'extra == "otel"' in r for r in requires), requires
    assert "romeways = romeways._cli:main" in archive.read(f"{info}/entry_points.txt").decode()


def test_mypy_strict_sees_the_types_of_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    """Outside the checkout, a user's strict app type-checks against the installed package
    (without py.typed mypy would refuse it: "missing library stubs or py.typed marker")."""
    app = tmp_path / "user_app.py"
    shutil.copy(SAMPLE, app)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            str(installed),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(app),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And the types are really there: a wrong assert_type is caught.
    app.write_text(SAMPLE.read_text() + "\nassert_type(order_message.payload, int)\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            str(installed),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(app),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 'Expression is of type "Order", not "int"' in proc.stdout, proc.stdout + proc.stderr


def test_pyright_strict_sees_the_types_of_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    app = tmp_path / "user_app.py"
    shutil.copy(SAMPLE, app)
    (tmp_path / "pyrightconfig.json").write_text(
        json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11"})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--pythonpath", str(installed), "--outputjson", str(app)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, [f"{d['range']['start']['line'] + 1}: {d['message']}" for d in errors]
