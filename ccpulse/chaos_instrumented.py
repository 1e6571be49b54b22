"""``python -m ccpulse.chaos_instrumented worker ...``: the worker plus table sizes on /metrics.

The soak of ``ccpulse chaos`` watches ``ccpulse_table_entries`` (sinks/prometheus.py);
until streams/app.py registers that collector itself, this entry point adds it
to the app it builds and then runs the normal ``ccpulse`` command line.
"""

from __future__ import annotations

import sys
from typing import Any

import streams.app
from ccpulse import cli
from sinks.prometheus import register_table_sizes

_create_app = streams.app.create_app


def _instrumented(settings: Any, role: str = "all") -> Any:
    app = _create_app(settings, role)
    pipe = app.pipeline  # type: ignore[attr-defined]
    register_table_sizes(pipe.metrics.registry, lambda: pipe.tables)
    return app


streams.app.create_app = _instrumented  # cli imports create_app from the module at call time

if __name__ == "__main__":
    sys.exit(cli.main())
