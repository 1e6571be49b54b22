"""Developer tooling: ``ccpulse bench``, ``ccpulse chaos``, fault injection, the bad-input corpus.

They measure and break the product from outside. Nothing here is imported by the
product or by the user commands (``ccpulse.commands``): only ``ccpulse.cli``, to
register ``bench`` and ``chaos``, and the tests.

Why inside the ``ccpulse`` distribution rather than a top-level ``tools`` package:
``bench`` and ``chaos`` are commands of the installed ``ccpulse``, and a top-level
package named ``tools`` in site-packages would clash with any other distribution's.
"""
