"""Throw-away TLS material made with the ``openssl`` CLI: a CA, a server and a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with key_password
    key_password: str
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def make_certs(folder: Path, hostname: str = "localhost") -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=ccpulse test {ca}", cwd=folder)
    (folder / "san.ext").write_text(f"subjectAltName=DNS:{hostname},IP:127.0.0.1\n")
    _openssl("req", *ec, "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={hostname}",
             cwd=folder)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    password = "key-pw-123"
    _openssl("req", *ec, "-keyout", "client.key", "-passout", f"pass:{password}", "-out", "client.csr",
             "-subj", "/CN=ccpulse", cwd=folder)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", cwd=folder)
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem",
                 folder / "client.key", password, folder / "other-ca.pem")
