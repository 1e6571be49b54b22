"""The customer-id hasher is made one way (``CustomerIdHasher.from_secret``), whether its
key is a configured secret (the raw store's, ``[fcr] customer_key``) or the bytes stored
on ``<app>-fcr-key``: the same secret gives the same hashes in either place."""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from ccpulse.config import FcrSettings, Settings
from ccpulse.pseudonym import CustomerIdHasher
from streams.fcr import customer_hasher

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-key-of-32-characters-long"


def test_a_text_secret_and_its_bytes_make_the_same_hasher() -> None:
    text, stored = CustomerIdHasher.from_secret(SECRET), CustomerIdHasher.from_secret(SECRET.encode())
    assert text == stored and text.hash("+15551234567") == stored.hash("+15551234567")
    assert text.key_id == stored.key_id


def test_the_fcr_hasher_of_a_configured_key_is_the_raw_stores_for_the_same_secret() -> None:
    settings = replace(Settings(), fcr=FcrSettings(customer_key=SECRET))
    pipe = SimpleNamespace(settings=settings, fcr_hasher=None, internal=lambda suffix: f"t-{suffix}")
    fcr = asyncio.run(customer_hasher(pipe))  # type: ignore[arg-type]  # configured: no broker asked
    assert fcr.hash("cust-1") == CustomerIdHasher.from_secret(SECRET).hash("cust-1")


def test_no_module_builds_a_hasher_or_an_hmac_of_its_own() -> None:
    offenders = []
    for package in ("ccpulse", "streams", "sinks", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            # pseudonym.py: the customer id's hash; connectors/payload.py: the platforms'
            # webhook signatures (their secrets, their algorithms), each in one place.
            if path in (ROOT / "ccpulse" / "pseudonym.py", ROOT / "ccpulse" / "connectors" / "payload.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    owner = getattr(getattr(node.func, "value", None), "id", None)
                    if name == "CustomerIdHasher" or (owner == "hmac" and name == "new"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
