"""Worker processes that end with the process that started them.

joblib's loky workers outlive a parent that is killed outright (SIGKILL, out-of-memory): they
go on rendering for minutes, holding memory and the staging folders open. Each worker of a
:func:`pool` calls :func:`exit_with_parent` when it starts: a daemon thread notices, within
:data:`POLL_SECONDS`, that the parent pid is gone and ends the worker. PyTorch's DataLoader
workers have a watchdog of their own, which waits for their current batch and watches only the
worker's parent; ``classifier.strokeset.worker_init`` adds :func:`exit_with`, which watches the
process that made the loader by pid and start time, from a forkserver's worker too, and ends a
worker that starts up after that process was already killed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.5
_watching: int | None = None
_lock = threading.Lock()


def _exit_when(gone: Callable[[], bool], key: int, name: str) -> None:
    """End this worker process once ``gone()`` says so: at once, or from a daemon thread that asks
    every :data:`POLL_SECONDS` (started once per process and ``key``; a no-op when ``key`` is
    this very process, where the sequential path calls the same task function)."""
    global _watching
    if key == os.getpid():
        return
    with _lock:
        if _watching == key:
            return
        _watching = key
    if gone():
        os._exit(1)

    def watch() -> None:
        while not gone():
            time.sleep(POLL_SECONDS)
        os._exit(1)  # nobody will read what this worker makes

    threading.Thread(target=watch, name=name, daemon=True).start()


def exit_with_parent(parent: int) -> None:
    """In a worker process: end it soon after process ``parent`` ends (at once if the parent died
    before the task arrived)."""
    _exit_when(lambda: os.getppid() != parent, parent, "exit-with-parent")


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: field 3 (the state) first (OSError without it)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of ``/proc/<pid>/stat``):
    with the pid, an identity that no later process reusing the pid shares. None without ``/proc``."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def running(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) still runs: not gone, not a
    zombie, not another process under a reused pid."""
    try:
        fields = _stat_fields(pid)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return fields[0] not in ("Z", "X") and (start is None or int(fields[19]) == start)


def exit_with(pid: int, start: int | None = None) -> None:
    """In a worker process: end it soon after process ``pid`` ends, whether ``pid`` is its parent
    or an ancestor further up (a loader worker started by a forkserver), and at once if it has
    already ended (a worker that starts up after its owner was killed would otherwise never learn
    of it: its parent is then the reaper, whose pid does not change)."""
    _exit_when(lambda: not running(pid, start), pid, "exit-with-owner")


def pool(jobs: int, **kwargs):
    """A joblib ``Parallel`` of ``jobs`` loky processes, each of which ends with this process from
    its start (:func:`exit_with_parent` as the initializer): a worker that never got a task would
    otherwise outlive a killed parent until loky's idle timeout."""
    from joblib import Parallel

    return Parallel(n_jobs=jobs, backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),), **kwargs)


def process_table() -> dict[int, int]:
    """pid -> parent pid of every living (not zombie) process, read from ``/proc`` (Linux): what
    the tests and ``benchmarks/kill_bench.py`` use to find workers that outlived their parent."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = _stat_fields(d)
            except OSError:
                continue
            if fields[0] != "Z":
                table[int(d)] = int(fields[1])
    return table


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``: its children, theirs, and so on."""
    table, out, todo = process_table(), set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, parent in table.items() if parent == p} - out
        out |= kids
        todo.extend(kids)
    return out
