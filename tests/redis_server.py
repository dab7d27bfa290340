"""A real redis-server on a free localhost port, for the tests of the RQ paths (no persistence)."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ncalr_backend.service.demo import free_port


@contextmanager
def redis_server(log_path: Optional[Path] = None, args: Optional[list] = None, cwd: Optional[Path] = None,
                 port: Optional[int] = None) -> Iterator[str]:
    """Start redis-server (its output to ``log_path``, else discarded), yield its URL once it
    answers PING, stop it after. ``args``: its options instead of the default (no persistence);
    ``cwd``: its working directory (where it persists); ``port``: a given one."""
    import redis

    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (scripts/test.sh installs it with apt-get)"
    port = port or free_port()
    opts = ["--save", "", "--appendonly", "no"] if args is None else list(args)
    proc = subprocess.Popen([exe, *opts, "--port", str(port), "--bind", "127.0.0.1"], cwd=cwd,
                            stdout=open(log_path, "wb") if log_path else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 20
    try:
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
