"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

The temporary (``.<name>.tmp-<pid>`` beside the target) is removed on every exit path; those left
by a process that was killed (its pid no longer running) are removed by the next write of the
same file. OS errors a user causes (full disk, read-only folder) come out as a one-line
:class:`~homus_render.errors.PathError` naming the target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import user_os_error


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, dead but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def owner_pid(name: str) -> int | None:
    """The pid a leftover's name ends with (``.x.tmp-123``, ``.x.partial-123``), or None."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def is_stale(name: str) -> bool:
    """A leftover of a process that no longer runs (never one of this process)."""
    pid = owner_pid(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def clear_stale_temps(path: str | Path) -> None:
    """Remove the temporaries of ``path`` that killed processes left behind."""
    path = Path(path)
    try:
        leftovers = list(path.parent.glob(f".{path.name}.tmp-*"))
    except OSError:
        return
    for p in leftovers:
        if is_stale(p.name):
            try:
                p.unlink()
            except OSError:
                pass


def write_with(path: str | Path, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call ``write(file)`` on a hidden temporary beside ``path``, then rename it over ``path``.
    On any failure (or interruption) the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    clear_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            if e.filename is not None and Path(e.filename) == tmp:  # name the target, not our temporary
                e.filename = None
            mapped = user_os_error(e, path)
            if mapped is not None:
                raise mapped from None
        raise


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to a hidden temporary beside ``path``, then rename it over ``path``."""
    write_with(path, lambda f: f.write(data), fsync)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"), fsync=True)


def write_json(path: str | Path, obj) -> None:
    """Stable JSON (sorted keys, fixed indent), so the same content gives the same bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
