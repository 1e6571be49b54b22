"""The user commands beside the worker: ``simulate``, ``replay``, ``demo`` and the local broker.

They feed the product and start it; the product (``ccpulse.config``, ``ccpulse.core``,
``streams``, ``sinks``, ``schemas``) never imports them. ``ccpulse.cli`` wires them in.
"""
