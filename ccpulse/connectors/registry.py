"""The webhook sources ``ccpulse connect http`` serves: one entry each (path, secret, check, mapper).

Adding a source is one line in ``SOURCES``: its route, the ``[connect]`` setting
holding its secret, how a request is authenticated and how its body is mapped.
Pure, like the mappers: the receiver hands in a ``WebhookRequest`` it read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl

from ccpulse.config import ConnectSettings
from ccpulse.connectors import amazon_connect, genesys, jira, twilio, zendesk
from ccpulse.connectors.base import Mapped, MappingError
from ccpulse.connectors.payload import json_document, same_secret

# Why a request was refused (the 401's reason in the log and the refusals counter).
UNSIGNED, BAD_SIGNATURE, STALE = "unsigned", "bad_signature", "stale"


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What the receiver read of one request."""

    url: str  # as the platform called it (scheme://host[:port]/path?query)
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    now_ms: int


Check = Callable[[WebhookRequest, ConnectSettings], "str | None"]
Mapper = Callable[[WebhookRequest, ConnectSettings], list[Mapped]]


@dataclass(frozen=True, slots=True)
class WebhookSource:
    name: str
    path: str
    secret_setting: str  # the ConnectSettings field holding its secret
    check: Check  # None when authentic, else UNSIGNED / BAD_SIGNATURE / STALE
    map: Mapper  # raises MappingError for a payload it cannot map

    def secret(self, settings: ConnectSettings) -> str:
        return str(getattr(settings, self.secret_setting))


def _form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise MappingError("not_utf8", "the form body is not UTF-8") from None


def _json(body: bytes) -> dict[str, Any]:
    doc = json_document(body)
    if not isinstance(doc, dict):
        raise MappingError("not_object", f"JSON {type(doc).__name__}, expected an object")
    return doc


def _twilio_check(req: WebhookRequest, s: ConnectSettings) -> str | None:
    signature = req.headers.get(twilio.SIGNATURE_HEADER.lower())
    if not signature:
        return UNSIGNED
    try:
        params = _form(req.body)
    except MappingError:
        return BAD_SIGNATURE  # Twilio sends UTF-8: what is not cannot be its signed body
    return None if twilio.verify(req.url, params, signature, s.twilio_auth_token) else BAD_SIGNATURE


def _zendesk_check(req: WebhookRequest, s: ConnectSettings) -> str | None:
    signature = req.headers.get(zendesk.SIGNATURE_HEADER.lower())
    timestamp = req.headers.get(zendesk.TIMESTAMP_HEADER.lower())
    if not signature or not timestamp:
        return UNSIGNED
    if zendesk.verify(req.body, signature, timestamp, s.zendesk_secret, req.now_ms, s.zendesk_tolerance_seconds):
        return None
    # Told apart for the log only: is it a good signature, just too old (a replay or a long-delayed retry)?
    fresh = zendesk.verify(req.body, signature, timestamp, s.zendesk_secret, req.now_ms, float("inf"))
    return STALE if fresh else BAD_SIGNATURE


def _jira_check(req: WebhookRequest, s: ConnectSettings) -> str | None:
    signature = req.headers.get(jira.SIGNATURE_HEADER.lower())
    if not signature:
        return UNSIGNED
    return None if jira.verify(req.body, signature, s.jira_secret) else BAD_SIGNATURE


def _api_key_check(req: WebhookRequest, s: ConnectSettings) -> str | None:
    given = req.headers.get(s.eventbridge_header.lower())
    if not given:
        return UNSIGNED
    return None if s.eventbridge_api_key and same_secret(s.eventbridge_api_key, given) else BAD_SIGNATURE


SOURCES: tuple[WebhookSource, ...] = (
    WebhookSource("twilio", "/twilio", "twilio_auth_token", _twilio_check,
                  lambda req, s: twilio.map_callback(dict(_form(req.body)))),
    WebhookSource("zendesk", "/zendesk", "zendesk_secret", _zendesk_check,
                  lambda req, s: zendesk.map_event(_json(req.body), s.zendesk_agent_channel)),
    WebhookSource("jira", "/jira", "jira_secret", _jira_check,
                  lambda req, s: jira.map_event(_json(req.body), s.jira_queue)),
    # EventBridge API destinations: the whole EventBridge event as the body, as connect kafka reads it.
    WebhookSource("connect", "/eventbridge/connect", "eventbridge_api_key", _api_key_check,
                  lambda req, s: amazon_connect.map_record(_json(req.body))),
    WebhookSource("genesys", "/eventbridge/genesys", "eventbridge_api_key", _api_key_check,
                  lambda req, s: genesys.map_record(_json(req.body))),
)
