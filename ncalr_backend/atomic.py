"""Atomic file writes: write to a temporary file in the same directory, fsync, rename, fsync the directory."""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """``durable=False`` skips the fsync (still atomic: readers see the old or the new file), for
    files that can be rebuilt or lost without harm (the image cache, progress.json); never for a
    project's state.json or review.json."""
    return _atomic(path, lambda f: f.write(data), durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=1, default=json_default).encode(), durable)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _atomic(path: str | os.PathLike, write: Callable, durable: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself: without it a power loss can bring the old file back
            fsync_dir(path.parent)  # (found by review, 2026-12-05)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def fsync_dir(directory: Path) -> None:
    """Make a rename (or a new entry) in ``directory`` durable; best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a filesystem or platform without directory handles: the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory (EINVAL); the rename stands
        pass
    finally:
        os.close(fd)


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def create_once(path: str | os.PathLike, make_value: Callable[[], str], empty_hint: str) -> str:
    """The value in the one-line file ``path``, made once: a new value (``make_value``) is written
    whole and synced to a private temporary file (mode 0600), then linked in place, so the name
    appears with its value or not at all, and of concurrent first callers the one that links first
    wins for all. A filesystem without hard links: created exclusively, then written. A file that
    stays empty (a process died writing it there) raises, saying ``empty_hint``."""
    path = Path(path)
    if path.exists():
        return _read_once(path, empty_hint)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        value = _write_line(fd, make_value())
        try:
            os.link(tmp, path)
            fsync_dir(path.parent)
        except FileExistsError:
            value = _read_once(path, empty_hint)
        except OSError:  # no hard links here
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return _read_once(path, empty_hint)
            value = _write_line(fd2, value)
        return value
    finally:
        os.unlink(tmp)


def _write_line(fd: int, value: str) -> str:
    """``value`` and a newline into the open file ``fd``, synced to disk; closes it."""
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return value


def _read_once(path: Path, empty_hint: str) -> str:
    for _ in range(50):  # another process may be writing it right now (no hard links)
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty: {empty_hint}")
