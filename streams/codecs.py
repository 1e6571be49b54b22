"""Faust codecs that keep domain objects (not dicts) in the memory tables.

The table holds the live object; only the changelog sees bytes. A recovered
table therefore holds the same type as a live one.
"""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs

from ccpulse.core.engine import PartitionRecord
from ccpulse.core.fcr import Contact
from ccpulse.core.lifecycle import Interaction


class _ObjectCodec(codecs.Codec):
    kind: Any = None

    def _dumps(self, obj: Any) -> bytes | None:
        # None is a deletion: it must reach Kafka as a tombstone (null value).
        return None if obj is None else orjson.dumps(obj.to_dict())

    def _loads(self, s: bytes) -> Any:
        return self.kind.from_dict(orjson.loads(s))


class InteractionCodec(_ObjectCodec):
    kind = Interaction


class PartitionRecordCodec(_ObjectCodec):
    kind = PartitionRecord


def customer_from_dict(doc: dict[str, Any]) -> dict[str, Any]:
    """A customer's FCR contacts as stored: {"p": partition, "contacts": [Contact, ...]}."""
    return {"p": doc["p"], "contacts": [c if isinstance(c, Contact) else Contact(*c)
                                        for c in doc["contacts"]]}


class FcrCustomerCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        return orjson.dumps({"p": obj["p"], "contacts": [c.to_list() for c in obj["contacts"]]})

    def _loads(self, s: bytes) -> Any:
        return customer_from_dict(orjson.loads(s))


class OrjsonCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes | None:
        return None if obj is None else orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


def register() -> None:
    """Idempotent: Faust looks codecs up by name in its own registry."""
    codecs.register("ccpulse_interaction", InteractionCodec())
    codecs.register("ccpulse_partition_record", PartitionRecordCodec())
    codecs.register("orjson", OrjsonCodec())
    codecs.register("ccpulse_fcr_customer", FcrCustomerCodec())
