"""One base for every failure homus expects: bad input, bad settings, faults of the disk.

The command line reports a :class:`HomusError` as one line (what, where, what to do) and exits
non-zero; any other exception is a bug in homus and keeps its traceback. This module sits at the
bottom of the package tree (``homus_render`` never imports upward) so every layer can raise it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class HomusError(Exception):
    """An expected failure; its message is the one line a user reads."""


class PathError(HomusError, OSError):
    """An operating-system error a user can fix (full disk, read-only folder, missing path...)."""


#: errno -> what to do about it. Errors outside this table are not the user's doing: they stay bugs.
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.EDQUOT: "the disk quota is used up; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "homus may not read or write it; fix its permissions, or choose another path",
    errno.EPERM: "homus may not read or write it; fix its permissions, or choose another path",
    errno.ENOENT: "no such file or folder; check the path (it may have been moved or deleted)",
    errno.ENOTDIR: "a file stands where a folder is expected; move it or choose another path",
    errno.EISDIR: "a folder stands where a file is expected; move it or choose another path",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENOTEMPTY: "the folder is not empty; remove it or choose another path",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer workers",
    errno.EIO: "the disk reported an input/output error; check the device",
}


def user_os_error(e: OSError, path: str | Path | None = None) -> PathError | None:
    """``e`` as a one-line :class:`PathError` naming the path, or None when it is not a fault a
    user causes (then it is a bug and keeps its traceback). ``path`` names the file when the error
    itself does not (a ``write`` that fills the disk carries no file name)."""
    if isinstance(e, PathError):
        return e
    advice = _ADVICE.get(e.errno)
    if advice is None:
        return None
    filename = e.filename if e.filename is not None else (None if path is None else str(path))
    where = filename if filename is not None else "(unnamed path)"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    err = PathError(e.errno, f"{where}: {e.strerror or os.strerror(e.errno)}: {advice}")
    err.filename = filename
    return err


def describe(e: BaseException) -> str | None:
    """The one line to print for an expected failure, or None for a bug."""
    if isinstance(e, PathError):
        return e.args[1] if len(e.args) > 1 else str(e)
    if isinstance(e, HomusError):
        return str(e)
    if isinstance(e, OSError):
        mapped = user_os_error(e)
        return None if mapped is None else mapped.args[1]
    return None


def not_a_folder(path: str | Path) -> PathError:
    """The one-line error for a file that stands where the folder ``path`` is expected."""
    return user_os_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)))


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) as a folder, or raise a :class:`PathError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file of that name
        raise not_a_folder(path) from None
    except OSError as e:
        raise user_os_error(e) or e from None
    return path


class SettingsError(HomusError, ValueError):
    """A setting out of range or of the wrong kind; the message names the setting."""


class MissingDataError(HomusError, FileNotFoundError):
    """Data that should be there is not (no raw folder, no stroke files); says how to get it."""
