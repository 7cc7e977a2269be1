"""One writer per target: a lock file beside what a command writes (a variant folder, a run
folder, a raw folder), held with ``fcntl.flock``.

The operating system releases the lock when its process ends, however it ends, so a killed
command never blocks the next one; the lock file it leaves is taken over and removed by the next
writer. A second writer fails at once with :class:`BusyError` naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import HomusError, user_os_error


class BusyError(HomusError, RuntimeError):
    """Another process is writing the same target."""


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``, beside the folder or file it is, whatever path leads to it: a
    link to a run folder locks the run itself, so two commands cannot write it through two names."""
    target = Path(target).resolve()
    return target.with_name(f".{target.name}.lock")


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def busy(target: str | Path) -> str | None:
    """Who is writing ``target`` now ("process N"), or None when no process holds its lock: asked
    without taking the lock for more than a moment, so a reader can say so rather than advise a
    write that would be refused."""
    path = lock_path(target)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing lets go of a lock taken above
    return None


@contextlib.contextmanager
def writing(target: str | Path, alternative: str = "choose another name") -> Iterator[Path]:
    """Hold the lock of ``target`` (whose parent folder must exist) while the body writes it.
    ``alternative`` completes the error's advice: "wait for it or <alternative>"."""
    target = Path(target)
    path = lock_path(target)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # name the folder the user chose, not our lock file in it
            e.filename = str(target)
            raise user_os_error(e) or e from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(f"{target} is being written by {_holder(path)}; wait for it or {alternative}") from None
        try:  # the holder before us may have removed the file as we opened it: lock the one in place
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # the pid is for the message only; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield target
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
