"""Keyed hashing of customer ids: the raw store's (``[clickhouse] hash_customer_ids``)
and the key FCR groups a customer's contacts by (``[fcr] customer_key``).

HMAC-SHA256 with a secret key, so the hash cannot be reversed by hashing guessed ids
(a plain SHA-256 of a phone number can); deterministic, so the same customer gets
the same value after a restart and FCR / recompute SQL still groups correctly.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson

HASH_HEX_CHARS = 32  # 128 bits: no collisions in practice, half the width of a full digest


def secret_bytes(secret: str | bytes) -> bytes:
    """A secret as HMAC key bytes: text is UTF-8, bytes are taken as they are."""
    return secret if isinstance(secret, bytes) else secret.encode("utf-8")


@dataclass(frozen=True)
class CustomerIdHasher:
    key: bytes = field(repr=False)
    hex_chars: int = HASH_HEX_CHARS

    @classmethod
    def from_secret(cls, secret: str | bytes) -> "CustomerIdHasher":
        """The one way to make a hasher: a configured secret (text, UTF-8) or a stored key (bytes)."""
        return cls(secret_bytes(secret))

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key: tells two keys apart in a log without revealing either."""
        return hmac.new(self.key, b"ccpulse key id", hashlib.sha256).hexdigest()[:8]

    def hash(self, customer_id: str) -> str:
        digest = hmac.new(self.key, customer_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:self.hex_chars]

    def payload(self, payload: str) -> str:
        """The original JSON message with its ``customer_id`` replaced by the hash.

        Only a string id is hashed (the decoder refused anything else); the other
        fields, unknown ones included, are kept as they were.
        """
        doc: Any = orjson.loads(payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("customer_id"), str) or not doc["customer_id"]:
            return payload
        doc["customer_id"] = self.hash(doc["customer_id"])
        return orjson.dumps(doc).decode("utf-8")
