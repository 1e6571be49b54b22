"""Checks before a worker starts (``ccpulse worker`` and ``ccpulse demo``): one line, not a traceback."""

from __future__ import annotations

import errno
import socket

from ccpulse.commands.errors import CommandError
from ccpulse.config import Settings, masked_dsn


def check_web_port(settings: Settings) -> None:
    """Refuse a web port another process holds, before anything is started.

    Faust would fail on it only after joining the group (a long traceback), and a
    demo polling /health there would take the other process for its worker.
    """
    port, bind = settings.web_port, settings.web.bind
    try:
        addresses = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CommandError(f"web.bind: cannot resolve {bind!r} ({exc.strerror or exc})") from None
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # As the worker's HTTP server binds: leftovers in TIME_WAIT do not count as busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                why = "is in use by another process" if exc.errno == errno.EADDRINUSE else \
                    f"cannot be listened on ({exc.strerror or exc})"
                raise CommandError(f"web port {port} on {bind} {why}: set CCPULSE_WEB_PORT to a free port "
                                   "(or stop the other worker or demo)") from None


def check_clickhouse_reachable(settings: Settings, timeout: float = 5.0) -> None:
    """A ClickHouse server that does not even accept a connection: one complete line.

    The driver would log a line of its own and then fail with a long message about
    connection pools; the reason the operator needs is just "refused" or "timed out".
    """
    ch = settings.clickhouse
    if not ch.enabled or ch.dsn.startswith("chdb://"):
        return
    from sinks.clickhouse import client_kwargs

    target = client_kwargs(ch.dsn)
    host, port = target["host"], target["port"]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
        raise CommandError(f"ClickHouse at {masked_dsn(ch.dsn)} unreachable: cannot connect to "
                           f"{host}:{port} ({reason})") from None
