"""Direct reads of Label Studio's Local Files from a shared disk (``LOCAL_FILES_DOCUMENT_ROOT``).

Label Studio serves a Local Files storage's images at ``/data/local-files/?d=<path>``, relative
to its ``LOCAL_FILES_DOCUMENT_ROOT``. When the backend sees the same disk at the same path, it can
read those bytes itself instead of asking Label Studio's web server for each one (what
label-studio-ml's ``get_local_path`` does when ``LOCAL_FILES_DOCUMENT_ROOT`` is set). Off unless
``LOCAL_FILES_DOCUMENT_ROOT`` is set on the backend.

Task URLs come from annotators, so a file is read only when Label Studio itself would serve it
to the backend's user, and more strictly:

* the URL is parsed by the one URL parser (``urls.parse_http_url``) and its origin is exactly
  Label Studio's (a relative ``/data/local-files/?d=...`` is joined to Label Studio's URL first);
  ``d`` is percent-decoded once (``urls.local_files_ref``), as Label Studio's view reads it;
* ``d`` is a relative path with no ``..`` component and no NUL (Label Studio's storage sync
  writes exactly that); it is joined to the document root;
* as Label Studio checks: the file's directory lies under the ``path`` of one of **this
  project's** Local Files storages (read through ``/api/storages/localfiles?project=ID``; Label
  Studio also accepts other projects' storages the user may see, the backend does not), and
  Label Studio serves local files at all (``LOCAL_FILES_SERVING_ENABLED``: a 404, not a 403, for
  a file that is not there);
* beyond what Label Studio checks: the real path (symbolic links resolved) stays inside the real
  document root and the real storage path; the file opened (``/proc/self/fd``) is that real
  path, a regular file, at most ``MAX_DOWNLOAD_BYTES``.

A refusal raises ``LocalFileRefused`` (an ``ImageRefused``: the task is listed among the cycle's
image failures, with what to fix). A file that passes the checks but is not on this disk (the
backend on another machine, a different mount) is fetched over HTTP instead, with one warning in
the log per document root.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ncalr_backend.service.urls import URLRefused, base_path, local_files_ref, parse_http_url, resolve

log = logging.getLogger(__name__)

MAX_BYTES = 50 * 1024 * 1024  # as the HTTP path (labelstudio.MAX_DOWNLOAD_BYTES)
_warned: set = set()
_warned_lock = threading.Lock()


class LocalFileRefused(URLRefused):
    """A Local Files path the backend will not read; the message says why and what to change."""


def _within(path: str, root: str) -> bool:
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root + os.sep) or root == os.sep


def _warn_once(key: str, message: str, *args) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


@dataclass
class LocalFiles:
    """The checks and the read for one project: ``root`` (the backend's LOCAL_FILES_DOCUMENT_ROOT,
    the same path as Label Studio's) and ``storages`` (the ``path`` of each of the project's
    Local Files storages, as Label Studio holds them)."""
    root: str
    storages: Sequence[str]
    max_bytes: int = MAX_BYTES
    direct: int = 0  # files read from the disk
    fallback: int = 0  # files not on this disk: fetched over HTTP
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.root = os.path.normpath(os.path.abspath(self.root))
        self.real_root = os.path.realpath(self.root)
        ok, self.outside = [], []
        for s in self.storages:
            if not isinstance(s, str) or not s.strip():
                continue
            p = os.path.normpath(s.strip())
            (ok if os.path.isabs(p) and _within(p, self.root) and p != self.root else self.outside).append(p)
        self.storage_paths: List[Tuple[str, str]] = [(p, os.path.realpath(p)) for p in ok]

    def path_for(self, d: str) -> Tuple[str, str]:
        """(the path Label Studio would serve for ``d``, its real path), or LocalFileRefused."""
        if "\x00" in d:
            raise LocalFileRefused(f"Local Files path {d[:200]!r} contains a NUL byte")
        if d.startswith("/") or d.startswith("\\"):
            raise LocalFileRefused(f"Local Files path {d[:200]!r} is absolute; d= must be relative to "
                                   "LOCAL_FILES_DOCUMENT_ROOT, as Label Studio's storage sync writes it")
        if ".." in d.split("/"):
            raise LocalFileRefused(f"Local Files path {d[:200]!r} has a '..' component; refer to the file "
                                   "by its plain path under the storage")
        full = os.path.normpath(os.path.join(self.root, posixpath.normpath(d).lstrip("/")))
        if not _within(full, self.root) or full == self.root:
            raise LocalFileRefused(f"Local Files path {d[:200]!r} is outside LOCAL_FILES_DOCUMENT_ROOT={self.root}")
        directory = os.path.dirname(full)
        covering = [real for p, real in self.storage_paths if _within(directory, p)]
        if not covering:
            hint = (f"; storage paths {self.outside} are not under LOCAL_FILES_DOCUMENT_ROOT={self.root}: mount "
                    "the shared disk on the backend at the same path as on Label Studio") if self.outside else ""
            raise LocalFileRefused(
                f"Local Files path {d[:200]!r} is not under any Local Files storage of this project "
                f"({[p for p, _ in self.storage_paths] or 'none'}): Label Studio would not serve it to the "
                f"project; add a Local Files storage that covers {directory} or fix the task's URL{hint}")
        real = os.path.realpath(full)
        if not _within(real, self.real_root) or not any(_within(real, c) for c in covering):
            raise LocalFileRefused(f"Local Files path {d[:200]!r} resolves (symbolic links) to {real}, outside "
                                   f"its storage and LOCAL_FILES_DOCUMENT_ROOT={self.root}; replace the link "
                                   "with the file")
        return full, real

    def read(self, d: str) -> Optional[bytes]:
        """The bytes of the file ``d`` names, None when it is not on this disk (fetch it over
        HTTP), or LocalFileRefused."""
        full, real = self.path_for(d)
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except FileNotFoundError:
            with self._lock:
                self.fallback += 1
            _warn_once(self.root, "LOCAL_FILES_DOCUMENT_ROOT=%s: %s is not on this disk; fetching Local Files "
                       "over HTTP from Label Studio instead (is the shared disk mounted at the same path as "
                       "on Label Studio?)", self.root, full)
            return None
        except OSError as exc:
            raise LocalFileRefused(f"Local Files path {d[:200]!r}: cannot open {real} ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LocalFileRefused(f"Local Files path {d[:200]!r}: {real} is not a regular file")
            if st.st_size > self.max_bytes:
                raise LocalFileRefused(f"Local Files path {d[:200]!r}: {real} is larger than "
                                       f"{self.max_bytes // (1024 * 1024)} MB")
            try:  # what was opened, after any change made since realpath (Linux)
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = real
            if opened != real:
                raise LocalFileRefused(f"Local Files path {d[:200]!r}: {real} changed while it was opened")
            chunks, total = [], 0
            while True:
                try:
                    b = os.read(fd, 1 << 20)
                except OSError as exc:
                    raise LocalFileRefused(f"Local Files path {d[:200]!r}: cannot read {real} ({exc.strerror})") \
                        from None
                if not b:
                    break
                total += len(b)
                if total > self.max_bytes:
                    raise LocalFileRefused(f"Local Files path {d[:200]!r}: {real} is larger than "
                                           f"{self.max_bytes // (1024 * 1024)} MB")
                chunks.append(b)
        finally:
            os.close(fd)
        with self._lock:
            self.direct += 1
        return b"".join(chunks)

    def report(self) -> dict:
        return {"root": self.root, "storages": [p for p, _ in self.storage_paths], "direct": self.direct,
                "http_fallback": self.fallback}


class DirectReader:
    """``read(url)``: a task's image URL read from the shared disk, or None to fetch it over HTTP
    (not a Local Files URL on Label Studio's origin, or not on this disk); LocalFileRefused for a
    Local Files URL that must not be read at all."""

    def __init__(self, base_url: str, files: Optional[LocalFiles], serving: bool = True):
        self.base_url = base_url.rstrip("/")
        self.origin = parse_http_url(self.base_url + "/").origin
        self.base_path = base_path(self.base_url)  # canonical, as the parsed URLs it is compared with
        self.files = files
        self.serving = serving

    def read(self, url: str) -> Optional[bytes]:
        if self.files is None or not isinstance(url, str):
            return None
        d = local_files_ref(resolve(self.base_url, url, self.base_path), self.origin, self.base_path)
        if d is None:
            return None
        if not self.serving:
            raise LocalFileRefused("Label Studio does not serve Local Files (LOCAL_FILES_SERVING_ENABLED is off "
                                   "there), so the backend does not read them either; enable it on Label Studio")
        return self.files.read(d)

    def report(self) -> dict:
        return self.files.report() if self.files is not None else {}


PROBE_PATH = ".ncalr-serving-probe/none"


def direct_reader(client, root: Optional[str], project_id: int) -> Optional[DirectReader]:
    """The direct reader for ``project_id`` (None when LOCAL_FILES_DOCUMENT_ROOT is not set):
    its Local Files storages from Label Studio, and whether Label Studio serves local files (a
    request for a file that is not there: 404 when serving is on, 403 when off)."""
    if not root:
        return None
    from ncalr_backend.service.labelstudio import LabelStudioError
    storages = client.local_files_storages(project_id)
    serving = True
    try:
        r = client.request("GET", f"/data/local-files/?d={PROBE_PATH}", ok=None)
        r.close()
        serving = r.status_code == 404
        if not serving:
            log.warning("Label Studio answered %s for a missing Local File (404 expected when it serves local "
                        "files); reading none directly this cycle", r.status_code)
    except LabelStudioError as exc:
        log.warning("Label Studio's local-files view not reachable (%s); reading none directly this cycle", exc)
        serving = False
    return DirectReader(client.url, LocalFiles(root, storages), serving)
