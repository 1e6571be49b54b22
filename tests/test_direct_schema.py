"""DirectSchema: the events Faust hands the agents are the ones its generic decode made."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.exceptions import ValueDecodeError
from faust.types import TP, Message

from streams import codecs


def _message(key: bytes | None, value: bytes | None) -> Message:
    return Message(topic="t", partition=0, offset=7, timestamp=0.0, timestamp_type=0, headers=[],
                   key=key, value=value, checksum=None, tp=TP("t", 0))


@pytest.fixture(scope="module")
def app() -> faust.App:
    codecs.register()
    return faust.App("direct-schema-test", broker="memory://")


@pytest.mark.parametrize("serializer,value", [
    ("raw", b'{"not": "decoded"}'),
    ("raw", None),
    ("orjson", b'{"kind": "window", "n": [1, 2]}'),
    ("orjson", None),
])
def test_decodes_as_fausts_own_schema_does(app: faust.App, serializer: str, value: bytes | None) -> None:
    message = _message(b"iid-1", value)
    direct = codecs.DirectSchema(serializer).compile(app)
    generic = faust.Schema(key_serializer="raw", value_serializer=serializer).compile(app)
    ours, theirs = asyncio.run(direct(message)), asyncio.run(generic(message))
    assert (ours.key, ours.value, ours.message) == (theirs.key, theirs.value, theirs.message)


def test_a_bad_json_value_goes_to_the_topics_handler_or_raises(app: faust.App) -> None:
    seen: list[Any] = []

    async def on_value_decode_error(exc: Exception, message: Message) -> None:
        seen.append((type(exc), message.offset))

    message = _message(b"k", b"{broken")
    handled = codecs.DirectSchema("orjson").compile(app, on_value_decode_error=on_value_decode_error)
    assert asyncio.run(handled(message)) is None
    assert seen == [(ValueDecodeError, 7)]
    with pytest.raises(ValueDecodeError):
        asyncio.run(handled(message, propagate=True))


def test_only_raw_and_json_values() -> None:
    with pytest.raises(ValueError, match="raw or orjson"):
        codecs.DirectSchema("json")
