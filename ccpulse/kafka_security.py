"""Kafka client security (SASL, TLS) from ``KafkaSettings``, for every client ccpulse creates.

One source for all of them, so the worker, the topic admin, ``simulate`` and
``replay`` can never disagree on how they authenticate:

- :func:`ssl_context`: the TLS context (CA bundle, client certificate, hostname check);
- :func:`client_kwargs`: keyword arguments for aiokafka clients (producer, consumer, admin);
- :func:`publisher_kwargs`: the same for ``publish.publish`` / ``publish_mixed`` / ``replay``;
- :func:`broker_credentials`: Faust's ``broker_credentials``;
- :func:`diagnose` / :func:`describe`: why a connection failed, as one line naming the
  broker, the mechanism and the user, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, Iterator, Protocol


class KafkaClientSettings(Protocol):
    """What this module reads of ``ccpulse.config.KafkaSettings``.

    Named structurally, not imported: config validates the TLS material with
    :func:`ssl_context` while loading, so importing config here would tie the two
    modules into a cycle.
    """

    # Read-only properties, as the frozen dataclass's fields are.
    @property
    def bootstrap(self) -> str: ...

    @property
    def security_protocol(self) -> str: ...

    @property
    def sasl_mechanism(self) -> str: ...

    @property
    def sasl_username(self) -> str: ...

    @property
    def sasl_password(self) -> str: ...

    @property
    def ssl_cafile(self) -> str: ...

    @property
    def ssl_certfile(self) -> str: ...

    @property
    def ssl_keyfile(self) -> str: ...

    @property
    def ssl_key_password(self) -> str: ...

    @property
    def ssl_check_hostname(self) -> bool: ...


class KafkaSecurityError(ValueError):
    """The TLS material cannot be used (one line: which file and why)."""


def uses_tls(k: KafkaClientSettings) -> bool:
    return k.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(k: KafkaClientSettings) -> bool:
    return k.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def mechanism(k: KafkaClientSettings) -> str:
    return k.sasl_mechanism or "PLAIN"


def ssl_context(k: KafkaClientSettings) -> ssl.SSLContext:
    """A client TLS context: system CAs unless ``ssl_cafile``; mutual TLS with ``ssl_certfile``."""
    try:
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=k.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(
            f"kafka.ssl_cafile: {k.ssl_cafile} is not a usable CA bundle ({_reason(exc)})") from None
    # check_hostname must go off before verify_mode could ever be relaxed; we keep CERT_REQUIRED.
    context.check_hostname = bool(k.ssl_check_hostname)
    if k.ssl_certfile:
        try:
            context.load_cert_chain(k.ssl_certfile, keyfile=k.ssl_keyfile or None,
                                    password=k.ssl_key_password or None)
        except (OSError, ssl.SSLError) as exc:
            where = f"{k.ssl_certfile}" + (f" / {k.ssl_keyfile}" if k.ssl_keyfile else "")
            raise KafkaSecurityError(f"kafka.ssl_certfile: cannot load the client certificate and key from "
                                     f"{where} ({_reason(exc)}; wrong kafka.ssl_key_password?)") from None
    return context


def client_kwargs(k: KafkaClientSettings) -> dict[str, Any]:
    """Security keyword arguments for ``AIOKafkaProducer/Consumer/AdminClient`` (no bootstrap)."""
    kwargs: dict[str, Any] = {"security_protocol": k.security_protocol}
    if uses_tls(k):
        kwargs["ssl_context"] = ssl_context(k)
    if uses_sasl(k):
        kwargs.update(sasl_mechanism=mechanism(k), sasl_plain_username=k.sasl_username,
                      sasl_plain_password=k.sasl_password)
    return kwargs


def publisher_kwargs(k: KafkaClientSettings) -> dict[str, Any]:
    """Security keyword arguments of ``publish.publish``, ``publish_mixed`` and ``replay``."""
    kwargs: dict[str, Any] = {"security_protocol": k.security_protocol}
    if uses_tls(k):
        kwargs["ssl_context"] = ssl_context(k)
    if uses_sasl(k):
        kwargs.update(sasl_mechanism=mechanism(k), sasl_username=k.sasl_username, sasl_password=k.sasl_password)
    return kwargs


def broker_credentials(k: KafkaClientSettings) -> dict[str, Any]:
    """Faust app keyword arguments: ``broker_credentials`` for SASL/TLS, nothing for PLAINTEXT."""
    import faust

    if k.security_protocol == "PLAINTEXT":
        return {}
    context = ssl_context(k) if uses_tls(k) else None
    if uses_sasl(k):
        # Faust derives SASL_SSL vs SASL_PLAINTEXT from whether a context is given.
        return {"broker_credentials": faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password, mechanism=mechanism(k), ssl_context=context)}
    return {"broker_credentials": faust.SSLCredentials(context)}


def describe(exc: BaseException, k: KafkaClientSettings, host: str | None = None) -> str:
    """One line for a failed connection to Kafka; names user and mechanism, never the password."""
    from aiokafka import errors

    where = f"Kafka at {host or k.bootstrap}"
    who = f"SASL {mechanism(k)} authentication failed for user {k.sasl_username!r}"
    if isinstance(exc, (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError)):
        return f"{where} refused the credentials ({who})"
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        text = str(exc)
        offered = f" (it offers {text.rsplit('are:', 1)[1].strip()})" if "Enabled mechanisms are:" in text else ""
        return (f"{where} does not offer SASL mechanism {mechanism(k)}{offered}; "
                "set kafka.sasl_mechanism / CCPULSE_KAFKA_SASL_MECHANISM")
    if isinstance(exc, errors.IllegalSaslStateError):
        return (f"{where} does not expect SASL on this listener; check kafka.security_protocol "
                f"({k.security_protocol})")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"{where}: TLS certificate not trusted ({exc.verify_message}); set kafka.ssl_cafile / "
                "CCPULSE_KAFKA_SSL_CAFILE to the CA that signed the broker's certificate")
    if uses_tls(k) and isinstance(exc, (ssl.SSLError, ConnectionResetError)):
        return (f"{where}: TLS handshake failed ({_reason(exc)}); is the listener TLS "
                f"(security_protocol {k.security_protocol})?")
    if isinstance(exc, errors.KafkaConnectionError) and "closed" in str(exc).lower():
        hint = ("the listener may require SASL or TLS" if k.security_protocol == "PLAINTEXT"
                else f"check that the listener speaks {k.security_protocol}")
        return f"{where} closed the connection during the handshake ({hint})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        hint = "" if k.security_protocol == "PLAINTEXT" else f"; does the listener speak {k.security_protocol}?"
        return f"{where} did not answer in time{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where} unreachable (connection refused)"
    authz = (errors.TopicAuthorizationFailedError, errors.GroupAuthorizationFailedError,
             errors.ClusterAuthorizationFailedError, errors.TransactionalIdAuthorizationFailed)
    if isinstance(exc, authz):
        user = f"user {k.sasl_username!r}" if uses_sasl(k) else "this client"
        return f"{where} denied {user} ({type(exc).__name__}): check the broker's ACLs"
    text = str(exc).strip()
    if not text.startswith(type(exc).__name__) and f"] {type(exc).__name__}" not in text:
        text = f"{type(exc).__name__} {text}".strip()
    if isinstance(exc, (errors.KafkaConnectionError, OSError)):
        return f"{where} unreachable: {text}"
    return f"{where}: {text}"


async def diagnose(k: KafkaClientSettings, timeout: float = 10.0) -> str | None:
    """Connect to each bootstrap server as ccpulse's clients would; the first failure as one line.

    aiokafka's clients only report "Unable to bootstrap" once every server failed;
    one direct connection brings back the cause (wrong password, TLS, refused).
    None when a server accepts the connection and the login.
    """
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        security = client_kwargs(k)
    except KafkaSecurityError as exc:
        return str(exc)
    first: str | None = None
    for server in k.bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            return f"kafka.bootstrap: {server.strip()!r} is not host:port"
        conn = None
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000), **security),
                timeout)
            # ApiVersions is allowed before login, so only a real request proves the session.
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
        except Exception as exc:  # every failure becomes the line we return
            first = first or describe(exc, k, server.strip())
            continue
        finally:
            if conn is not None:
                conn.close()
        return None
    return first


@contextlib.contextmanager
def quiet_client_logs() -> Iterator[None]:
    """Silence aiokafka's own error lines while we report the failure ourselves.

    Before the worker configures logging, Python's last-resort handler would print
    aiokafka's "Unable connect to ..." next to our one-line error.
    """
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
