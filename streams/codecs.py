"""Faust codecs that keep domain objects (not dicts) in the memory tables.

The table holds the live object; only the changelog sees bytes. A recovered
table therefore holds the same type as a live one.
"""

from __future__ import annotations

from typing import Any

import orjson
from faust.exceptions import ValueDecodeError
from faust.serializers import Schema, codecs
from faust.types import AppT

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
    """The compact record of ``Interaction.to_bytes``; records written before it are read too."""

    kind = Interaction

    def _dumps(self, obj: Any) -> bytes | None:
        return None if obj is None else obj.to_bytes()

    def _loads(self, s: bytes) -> Any:
        return Interaction.from_bytes(s)


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


class DirectSchema(Schema):
    """Raw keys, and raw or JSON values, decoded without Faust's codec registry.

    Faust's generic decode (a registry lookup and a codec chain for the key and the
    value of every record) cost about 5% of a worker's time, and every topic ccpulse
    consumes has raw keys and raw or JSON values. Sending is unchanged (the schema
    keeps its serializers).
    """

    def __init__(self, value_serializer: str) -> None:
        if value_serializer not in ("raw", "orjson"):
            raise ValueError(f"DirectSchema decodes raw or orjson values, not {value_serializer!r}")
        super().__init__(key_serializer="raw", value_serializer=value_serializer)

    def compile(self, app: AppT, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Any:
        create_event = app.create_event
        loads = orjson.loads if self.value_serializer == "orjson" else None

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            value = message.value
            if loads is not None and value is not None:
                try:
                    value = loads(value)
                except ValueError as exc:  # as Faust's decode: the topic's handler, or raise
                    error = ValueDecodeError(str(exc))
                    if propagate or on_value_decode_error is None:
                        raise error from exc
                    await on_value_decode_error(error, message)
                    return None
            return create_event(message.key, value, message.headers, message)

        return decode


def register() -> None:
    """Idempotent: Faust looks codecs up by name in its own registry."""
    codecs.register("ccpulse_interaction", InteractionCodec())
    codecs.register("ccpulse_partition_record", PartitionRecordCodec())
    codecs.register("orjson", OrjsonCodec())
    codecs.register("ccpulse_fcr_customer", FcrCustomerCodec())
