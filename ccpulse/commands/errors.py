"""The one error type of every command: a failure the user can act on, printed as one line."""


class CommandError(RuntimeError):
    """A failure the user can act on; printed as one line by ``ccpulse.cli.main``."""
