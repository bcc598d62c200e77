"""Test certificates for the TLS tests of every connector, made with the ``openssl`` command
line: a CA, a server certificate for 127.0.0.1/localhost, a client certificate (also with its
key encrypted), and a second CA that signed none of them.

The extensions are those a strict verifier wants (Python 3.13 turns on
``VERIFY_X509_STRICT``): the CA marked critical ``CA:TRUE`` with ``keyCertSign``, the leaves with
key usages, subject and authority key identifiers."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

_CA_EXTENSIONS = (
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    "-addext", "subjectKeyIdentifier=hash",
)  # fmt: skip
_LEAF = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)


@dataclass(frozen=True)
class TestPki:
    """The PEM files ``make_pki`` wrote (file names as given in its directory)."""

    directory: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    key_password: str


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> TestPki:
    """Write ``ca.pem``/``ca.key``, ``other-ca.pem``, ``server.pem``/``server.key``,
    ``client.pem``/``client.key`` and ``client-encrypted.key`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=romeways test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            *_CA_EXTENSIONS,
        )  # fmt: skip
    leaves = {
        "server": "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extra in leaves.items():
        (directory / f"{name}.ext").write_text(_LEAF + extra)
        _openssl(
            directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj",
            "/CN=127.0.0.1" if name == "server" else "/CN=romeways-client",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        _openssl(
            directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext",
        )  # fmt: skip
    password = "key-" + uuid.uuid4().hex[:12]
    _openssl(
        directory, "pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{password}",
        "-out", "client-encrypted.key",
    )  # fmt: skip
    return TestPki(
        directory=directory,
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_key_encrypted=directory / "client-encrypted.key",
        key_password=password,
    )
