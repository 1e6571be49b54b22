"""``until_stored``: the retry every connector wraps its publishing in (pure asyncio, no broker).

A connector acknowledges its source only after Kafka took the batch; this is the loop
that keeps trying, and that gives up only when asked to stop, so the source is read again.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from ccpulse.commands import connect_asterisk, connect_kafka
from ccpulse.commands.connect_publish import PublishError, until_stored
from ccpulse.commands.errors import CommandError


def test_a_failed_batch_is_sent_again_until_kafka_takes_it() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        if len(calls) < 2:
            raise PublishError("broker away")

    asyncio.run(until_stored(step, asyncio.Event()))
    assert len(calls) == 2


def test_stopped_while_kafka_refuses_it_gives_up_in_one_line_naming_no_source_s_unit() -> None:
    async def step() -> None:
        raise PublishError("broker away")

    async def main() -> None:
        stop = asyncio.Event()
        stop.set()
        await until_stored(step, stop)

    with pytest.raises(CommandError) as caught:
        asyncio.run(main())
    message = str(caught.value)
    assert "read again at the next start" in message and "lines" not in message


def test_an_error_that_is_not_kafka_s_refusal_is_not_retried() -> None:
    async def step() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        asyncio.run(until_stored(step, asyncio.Event()))


def test_both_followers_use_the_one_public_helper() -> None:
    for module in (connect_kafka, connect_asterisk):
        source = inspect.getsource(module)
        assert "until_stored(" in source and "_until_stored" not in source, module.__name__
