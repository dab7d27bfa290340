"""The service's own error: a cycle (or a stage of it) cannot complete; the message says why."""


class CycleError(RuntimeError):
    """The cycle cannot complete; the message says why.

    ``retryable``: the cause may pass by itself (Label Studio unreachable or failing, a full disk),
    so the scheduler tries again later. ``interrupted``: the backend is stopping; the cycle runs
    again on the next start. ``live``: the new version was already switched to in Label Studio
    when the failure came (it is never rolled back then). ``superseded``: another cycle of the
    project started over this one's marks (under RQ this worker lost the project's lock); this one
    stopped without touching its successor's state, and nothing is to be retried."""

    def __init__(self, message: str, retryable: bool = False, interrupted: bool = False, live: bool = False,
                 superseded: bool = False):
        super().__init__(message)
        self.retryable, self.interrupted, self.live = retryable, interrupted, live
        self.superseded = superseded
