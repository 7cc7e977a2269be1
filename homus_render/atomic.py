"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to a hidden temporary beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"), fsync=True)


def write_json(path: str | Path, obj) -> None:
    """Stable JSON (sorted keys, fixed indent), so the same content gives the same bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
