"""The service's own error: a cycle (or a stage of it) cannot complete; the message says why."""


class CycleError(RuntimeError):
    """The cycle cannot complete; the message says why (nothing was switched)."""
