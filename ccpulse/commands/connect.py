"""``ccpulse connect http|asterisk|kafka``: platforms' events into the input topics.

Each sub-command lives in its own module (``connect_http``, ``connect_asterisk``,
``connect_kafka``) and registers itself here through its ``add_parser(sub, settings)``.
"""

from __future__ import annotations

from typing import Any, Callable


def add_parser(sub: Any, settings: Callable[[], Any]) -> None:
    """Register ``connect`` and its sub-commands; ``settings`` loads the Settings when a command runs."""
    connect = sub.add_parser("connect", help="turn a platform's own events (webhooks, Asterisk queue_log, "
                                             "a Kafka topic) into ccpulse input events")
    sources = connect.add_subparsers(dest="connector", required=True)
    from ccpulse.commands import connect_asterisk, connect_http, connect_kafka

    for module in (connect_http, connect_asterisk, connect_kafka):
        module.add_parser(sources, settings)
