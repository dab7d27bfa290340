"""A cycle nobody runs any more (a crash, a dead worker): what is left of it is cleaned up, and a
cycle that keeps killing its process is not re-run for ever. Used by the schedulers' recovery and
by a cycle that starts over a dead one's marks (cycle.py)."""
from __future__ import annotations

import logging

from ncalr_backend.service.mirror import TaskMirror
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)


def abandon_in_progress(st: ProjectStore, s: dict) -> int:
    """A cycle nobody runs any more (a crash, a dead worker): remove its partial directories, and
    remember its version as an orphan (the next cycle deletes whatever it wrote into Label Studio).
    Returns how many directories went."""
    removed = st.clean_workdirs()
    mirror = TaskMirror(st.root)
    if mirror.path.exists():  # after a crash, read the whole project once (mirror.py)
        mirror.doubt("recovered after an interrupted cycle")
    orphans = set(s.get("orphan_versions") or [])
    ip = s.get("in_progress") or {}
    if ip.get("model_version"):
        orphans.add(ip["model_version"])
    # a cycle that died with its process (not one a shutdown stopped at a batch): counted, so that
    # one that kills the process every time (out of memory) is not re-run for ever (MAX_CRASHES)
    crashes = int(s.get("crashed_cycles") or 0) + (1 if ip and not ip.get("interrupted") else 0)
    st.update_state(in_progress=None, orphan_versions=sorted(orphans), crashed_cycles=crashes)
    return removed


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
