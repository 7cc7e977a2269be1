"""Shared fixtures: the HOMUS zip, one full fetch per session, hand-made stroke files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The raw dataset lives beside the repository, never inside it: <repo>/../shared/datasets/.
SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/HOMUS-v2.zip"
#: Content hash of HOMUS v2 as ``homus fetch`` computes it (sha256 over path + file sha256).
HOMUS_V2_SHA256 = "e2bfcc910a1aad629cb62f3dc0f67d649cf9de5160b8b703eece33fe4dc6d462"


def zip_path() -> Path:
    """$HOMUS_SOURCE when set, else the shared copy beside the repository."""
    env = os.environ.get("HOMUS_SOURCE")
    return Path(env) if env else SHARED_ZIP


@pytest.fixture(scope="session")
def homus_zip() -> Path:
    path = zip_path()
    if not path.is_file():
        pytest.skip(f"HOMUS v2 zip not found at {path} (set HOMUS_SOURCE to a local HOMUS-v2.zip)")
    return path


@pytest.fixture(scope="session")
def full_fetch(homus_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole dataset, fetched once per session: the FetchReport. Tests must not modify it."""
    from homus_render.fetch import fetch

    return fetch(tmp_path_factory.mktemp("full") / "raw", "v2", str(homus_zip))


@pytest.fixture(scope="session")
def raw_full(full_fetch) -> Path:
    """The raw folder of :func:`full_fetch`: ``<writer>/<writer>-<n>.txt`` and homus.json."""
    return full_fetch.raw_dir


def sample_text(label: str, strokes, newline: str = "\n") -> str:
    """A stroke file: the label, then one ``x,y;x,y;`` line per stroke."""
    lines = [label] + ["".join(f"{x},{y};" for x, y in stroke) for stroke in strokes]
    return newline.join(lines) + newline


#: Hand-made symbols (label, strokes) for folders and archives built in tests.
HANDMADE = [
    ("Barline", [[(10, 0), (10, 40), (11, 80)]]),
    ("Dot", [[(5, 5), (6, 5), (6, 6), (5, 6)]]),
    ("Flat", [[(0, 0), (0, 60), (10, 50), (12, 44), (8, 40), (0, 45)]]),
    ("Whole-Note", [[(0, 10), (10, 0), (20, 10), (10, 20), (0, 10)]]),
]


def write_handmade(root: Path, writers=("1", "2")) -> list[str]:
    """``root/<writer>/<writer>-<n>.txt`` for every hand-made symbol; returns the relative paths."""
    made = []
    for w in writers:
        (root / w).mkdir(parents=True, exist_ok=True)
        for n, (label, strokes) in enumerate(HANDMADE, 1):
            rel = f"{w}/{w}-{n}.txt"
            (root / rel).write_text(sample_text(label, strokes))
            made.append(rel)
    return made
