"""Errors the command line turns into a message and an exit status."""


class RunError(RuntimeError):
    """A run that cannot start or must stop; the message says why and what to do."""
