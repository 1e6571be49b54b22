"""Connectors: platforms' own event formats mapped to EVENTS.md events.

Each source module (``asterisk``, ``twilio``, ``zendesk``, ``jira``,
``amazon_connect``, ``genesys``) holds pure mappers from the platform's payload
to EVENTS.md events, plus its signature check when the platform signs its
webhooks. The commands that feed them (``ccpulse connect http|asterisk|kafka``)
live in ``ccpulse.commands``; this package imports nothing of the streaming layer.
"""
