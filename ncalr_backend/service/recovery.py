"""A cycle nobody runs any more (a crash, a dead worker): what is left of it is cleaned up, and a
cycle that keeps killing its process is not re-run for ever. Used by the schedulers' recovery and
by a cycle that starts over a dead one's marks (cycle.py)."""
from __future__ import annotations

import logging
from typing import Optional

from ncalr_backend.service.mirror import TaskMirror
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)


def abandon_in_progress(st: ProjectStore, s: dict, rerun: Optional[dict] = None) -> Optional[int]:
    """A cycle nobody runs any more (a crash, a dead worker): remember its version as an orphan (the
    next cycle deletes whatever it wrote into Label Studio), count its death, record ``rerun`` as
    the pending request, and remove its partial directories. ``s`` is the state read before: if the
    marker changed since (a cycle began in between), nothing is done and None is returned (the caller
    requests nothing: that cycle runs the project); otherwise how many directories went."""
    ip = s.get("in_progress") or None
    if ip is not None or rerun is not None:
        if not st.abandon_marker(ip, rerun):
            return None  # a cycle began since: its marker and its work folder are its own
    mirror = TaskMirror(st.root)
    if ip is not None and mirror.path.exists():  # after a crash, read the whole project once (mirror.py)
        mirror.doubt("recovered after an interrupted cycle")
    cycle = ip.get("cycle") if ip is not None else None
    # only the given-up cycle's folders and older ones: a successor's number is higher
    return st.clean_workdirs(up_to=cycle if isinstance(cycle, int) and not isinstance(cycle, bool) else None)


MAX_CRASHES = 3


def crash_looping(st: ProjectStore) -> bool:
    """True (and says so in the project's state) when its last MAX_CRASHES cycles each died with
    their process: recovery stops re-running it; the next trigger or "Start training" still does."""
    n = int(st.state().get("crashed_cycles") or 0)
    if n < MAX_CRASHES:
        return False
    msg = (f"the last {n} cycles each ended with their process (killed: out of memory?); not re-run "
           "automatically. Check the worker's memory and log; the next trigger or Start training runs it again")
    log.error("project %s: %s", st.project_id, msg)
    st.update_state(pending=None, last_error=msg)
    return True
