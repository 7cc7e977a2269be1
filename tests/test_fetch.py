"""Fetching the raw dataset: from the shared zip, from a folder, and refusing every kind of bad archive."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import HANDMADE, HOMUS_V2_SHA256, sample_text, write_handmade

from homus_render.dataset import DATASET_INFO, list_stroke_files, read_info
from homus_render.fetch import ENV_SOURCE, OFFICIAL, FetchError, fetch, resolve_source
from homus_render.index import INDEX
from homus_render.labels import LABEL_SET


def files_hash(raw, files: list[str]) -> str:
    """The content hash of ``files`` under ``raw``, computed here from their bytes."""
    from pathlib import Path

    from homus_render.dataset import content_hash, file_digest

    return content_hash({rel: file_digest(Path(raw, rel).read_bytes()) for rel in files})


def assert_nothing_in_place(raw: Path) -> None:
    """A failed fetch leaves no homus.json, no writer folders and no staging folder behind."""
    if not raw.exists():
        return
    left = sorted(p.name for p in raw.iterdir())
    assert DATASET_INFO not in left
    assert not [n for n in left if n.isdigit()], left
    assert not [n for n in left if n.startswith(".fetch")], left


def refused(tmp_path: Path, source, match: str | None = None) -> str:
    """Fetch ``source`` into ``tmp_path/raw``: it must fail (message matching ``match``) and put
    nothing in place. Returns the message."""
    raw = tmp_path / "raw"
    with pytest.raises(FetchError, match=match) as info:
        fetch(raw, "v2", str(source))
    assert_nothing_in_place(raw)
    return str(info.value)


# --- the real dataset --------------------------------------------------------------------------


def test_full_fetch_report(full_fetch, homus_zip: Path):
    r = full_fetch
    assert not r.already_there
    assert (r.samples, r.writers, r.labels) == (15_200, 100, 32)
    assert r.version == "v2" and r.source == str(homus_zip)
    assert r.invalid == [] and r.sha256 == HOMUS_V2_SHA256
    summary = r.summary()
    assert "HOMUS v2: 15,200 samples, 100 writers, 32 labels" in summary
    assert f"content sha256 {HOMUS_V2_SHA256}" in summary
    assert "warning" not in summary


def test_full_fetch(raw_full: Path):
    files = list_stroke_files(raw_full)
    assert len(files) == 15_200
    writers = sorted((p.name for p in raw_full.iterdir() if p.is_dir()), key=int)
    assert writers == [str(i) for i in range(1, 101)]
    assert all(len(list((raw_full / w).glob("*.txt"))) == 152 for w in writers)
    info = json.loads((raw_full / DATASET_INFO).read_text())
    assert info["version"] == "v2"
    assert (info["samples"], info["writers"], info["labels"]) == (15_200, 100, 32)
    assert info["invalid"] == []
    assert info["sha256"] == files_hash(raw_full, files) == HOMUS_V2_SHA256
    # nothing else was left: no staging folder, no in-progress marker, no zip members besides samples;
    # beside homus.json, only the stroke index that renders read instead of parsing every file
    assert sorted(p.name for p in raw_full.iterdir() if not p.name.isdigit()) == [INDEX, DATASET_INFO]


def test_full_fetch_labels(raw_full: Path):
    """Every one of the 32 classes is there."""
    counts: dict[str, int] = {}
    for rel in list_stroke_files(raw_full):
        with open(raw_full / rel) as f:
            label = f.readline().strip()
        counts[label] = counts.get(label, 0) + 1
    assert set(counts) == LABEL_SET
    assert sum(counts.values()) == 15_200


def test_second_fetch_does_nothing(raw_full: Path, homus_zip: Path):
    before = {p: p.stat().st_mtime_ns for p in [raw_full / DATASET_INFO, raw_full / "1", raw_full / "1/1-1.txt"]}
    report = fetch(raw_full, "v2", str(homus_zip))
    assert report.already_there
    assert (report.samples, report.writers, report.labels) == (15_200, 100, 32)
    assert report.sha256 == HOMUS_V2_SHA256
    assert "already there" in report.summary()
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert [p.name for p in raw_full.iterdir() if p.name.startswith(".")] == [INDEX]  # no staging left


def test_other_version_into_the_same_folder_is_refused(raw_full: Path, homus_zip: Path):
    with pytest.raises(FetchError, match="already holds HOMUS v2"):
        fetch(raw_full, "v1", str(homus_zip))


# --- folders -------------------------------------------------------------------------------


def test_folder_source(tmp_path: Path):
    src = tmp_path / "src" / "HOMUS"
    made = write_handmade(src, writers=("1", "2"))
    (src / "README.txt").write_text("not a sample\n")  # ignored: not <writer>/<writer>-<n>.txt
    (src / "1" / "notes.txt").write_text("ignored\n")
    (src / "2" / "1-9.txt").write_text(sample_text("Dot", [[(1, 1)]]))  # writer mismatch: ignored
    raw = tmp_path / "raw"
    report = fetch(raw, "v2", str(tmp_path / "src"))
    assert not report.already_there
    assert sorted(list_stroke_files(raw)) == sorted(made)
    assert (report.samples, report.writers, report.labels) == (len(made), 2, len(HANDMADE))
    assert report.invalid == []
    for rel in made:
        assert (raw / rel).read_bytes() == (src / rel).read_bytes()
    info = read_info(raw)
    assert info["samples"] == len(made) and info["sha256"] == files_hash(raw, made) == report.sha256
    summary = report.summary()
    assert "warning: expected 15,200 samples" in summary and "found 8" in summary
    # and a second fetch sees it is there
    assert fetch(raw, "v2", str(tmp_path / "src")).already_there


def test_folder_source_reports_files_that_will_not_parse(tmp_path: Path):
    src = tmp_path / "src"
    write_handmade(src, writers=("1",))
    (src / "1" / "1-2.txt").write_text("Dot\n1,2;oops,4\n")
    report = fetch(tmp_path / "raw", "v2", str(src))
    assert report.samples == len(HANDMADE)
    assert len(report.invalid) == 1 and "1-2.txt:2" in report.invalid[0]
    assert "will not parse" in report.summary()
    assert read_info(tmp_path / "raw")["invalid"] == report.invalid


def test_folder_without_samples(tmp_path: Path):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "readme.txt").write_text("hello\n")
    refused(tmp_path, src, "no HOMUS files")


def test_raw_dir_with_only_a_readme_is_fine(tmp_path: Path):
    src = tmp_path / "src"
    write_handmade(src)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "README.md").write_text("raw data goes here\n")
    fetch(raw, "v2", str(src))
    assert (raw / "README.md").read_text() == "raw data goes here\n"
    assert (raw / DATASET_INFO).is_file()


def test_foreign_raw_dir_is_refused(tmp_path: Path):
    src = tmp_path / "src"
    write_handmade(src)
    raw = tmp_path / "raw"
    (raw / "mine").mkdir(parents=True)
    (raw / "notes.txt").write_text("precious\n")
    with pytest.raises(FetchError, match="not empty") as info:
        fetch(raw, "v2", str(src))
    assert "--raw-dir" in str(info.value)
    assert sorted(p.name for p in raw.iterdir()) == ["mine", "notes.txt"]
    assert (raw / "notes.txt").read_text() == "precious\n"


def test_killed_fetch_is_cleaned_and_redone(tmp_path: Path):
    src = tmp_path / "src"
    made = write_handmade(src)
    raw = tmp_path / "raw"
    (raw / "77").mkdir(parents=True)  # half-moved writer of a killed run
    (raw / "77" / "77-1.txt").write_text("Dot\n1,1\n")
    (raw / ".fetch-abc").mkdir()
    (raw / DATASET_INFO).write_text(json.dumps({"version": "v2", "samples": 1, "writers": 1, "labels": 1,
                                                "sha256": "x"}))
    (raw / ".fetch-in-progress").touch()
    report = fetch(raw, "v2", str(src))
    assert not report.already_there
    assert sorted(list_stroke_files(raw)) == sorted(made)
    assert not (raw / "77").exists() and not (raw / ".fetch-abc").exists()
    assert not (raw / ".fetch-in-progress").exists()
    assert read_info(raw)["samples"] == len(made)


# --- sources and versions ------------------------------------------------------------------


def test_unknown_version(tmp_path: Path, homus_zip: Path):
    with pytest.raises(FetchError, match="unknown dataset version 'v3'"):
        fetch(tmp_path / "raw", "v3", str(homus_zip))
    assert not (tmp_path / "raw").exists()


def test_resolve_source_order(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV_SOURCE, raising=False)
    assert resolve_source(None, "v2") == OFFICIAL["v2"]
    assert resolve_source(None, "v1") == OFFICIAL["v1"]
    monkeypatch.setenv(ENV_SOURCE, "/somewhere/HOMUS.zip")
    assert resolve_source(None, "v2") == "/somewhere/HOMUS.zip"
    assert resolve_source("given.zip", "v2") == "given.zip"


def test_env_source_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    made = write_handmade(src)
    monkeypatch.setenv(ENV_SOURCE, str(src))
    report = fetch(tmp_path / "raw", "v2")
    assert report.source == str(src) and report.samples == len(made)


def test_missing_source(tmp_path: Path):
    refused(tmp_path, tmp_path / "nowhere.zip", "no such file, folder or http")


def test_unreachable_url_suggests_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    msg = refused(tmp_path, "http://127.0.0.1:9/x.zip")
    assert "could not download http://127.0.0.1:9/x.zip" in msg
    assert "--source" in msg and ENV_SOURCE in msg


# --- hostile and broken archives -----------------------------------------------------------


def make_zip(path: Path, extra=None, compression=zipfile.ZIP_DEFLATED) -> Path:
    """A small HOMUS-like zip of hand-made samples, plus ``extra(zipfile)`` members."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for w in ("1", "2"):
            for n, (label, strokes) in enumerate(HANDMADE, 1):
                z.writestr(f"HOMUS/{w}/{w}-{n}.txt", sample_text(label, strokes))
        if extra:
            extra(z)
    return path


def test_good_small_zip(tmp_path: Path):
    archive = make_zip(tmp_path / "good.zip")
    report = fetch(tmp_path / "raw", "v2", str(archive))
    assert (report.samples, report.writers, report.labels) == (8, 2, len(HANDMADE))
    assert sorted(list_stroke_files(tmp_path / "raw")) == sorted(
        f"{w}/{w}-{n}.txt" for w in ("1", "2") for n in range(1, len(HANDMADE) + 1))


def _escape(z):
    z.writestr("HOMUS/../../evil.txt", "Dot\n1,1\n")


def _escape_backslash(z):
    z.writestr("HOMUS\\..\\..\\evil.txt", "Dot\n1,1\n")


def _absolute(z):
    z.writestr(zipfile.ZipInfo("/tmp/evil/1/1-99.txt"), "Dot\n1,1\n")


def _drive(z):
    z.writestr("C:/evil/1/1-99.txt", "Dot\n1,1\n")


def _symlink(z):
    info = zipfile.ZipInfo("HOMUS/1/1-99.txt")
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert info.external_attr == 0o120777 << 16
    z.writestr(info, "/etc/passwd")


def _huge(z):
    z.writestr("HOMUS/1/1-99.txt", b"\0" * (20 * 2**20))


def _bomb(z):
    z.writestr("HOMUS/1/1-99.txt", b"\0" * (5 * 2**20))  # under the size limit, but 1000:1


HOSTILE = [
    ("dotdot", _escape, "would escape"),
    ("backslash-dotdot", _escape_backslash, "would escape"),
    ("absolute", _absolute, "would escape"),
    ("drive-letter", _drive, "would escape"),
    ("symlink", _symlink, "symbolic link"),
    ("huge-member", _huge, "absurdly large"),
    ("compression-bomb", _bomb, "absurdly large"),
]


@pytest.mark.parametrize("extra,words", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_zip_is_refused(tmp_path: Path, extra, words):
    archive = make_zip(tmp_path / "hostile.zip", extra)
    msg = refused(tmp_path, archive, words)
    assert str(archive) in msg and "refusing" in msg
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil/1/1-99.txt").exists()


def test_huge_member_zip_is_small_on_disk(tmp_path: Path):
    """The bomb test really is cheap: a 20 MB member compresses to a few tens of KB."""
    archive = make_zip(tmp_path / "bomb.zip", _huge)
    assert archive.stat().st_size < 200_000
    big = max(zipfile.ZipFile(archive).infolist(), key=lambda m: m.file_size)
    assert big.file_size == 20 * 2**20


def test_truncated_zip(tmp_path: Path, homus_zip: Path):
    data = homus_zip.read_bytes()
    archive = tmp_path / "HOMUS-v2.zip"
    archive.write_bytes(data[: len(data) // 2])
    msg = refused(tmp_path, archive, "not a readable zip archive")
    assert "truncated" in msg


@pytest.mark.parametrize("content", [b"", b"<html>404 Not Found</html>\n", b"PK\x03\x04garbage" * 10])
def test_not_a_zip(tmp_path: Path, content: bytes):
    archive = tmp_path / "download.zip"
    archive.write_bytes(content)
    refused(tmp_path, archive, "not a readable zip archive")


def test_corrupted_member(tmp_path: Path):
    """A flipped byte inside a stored member fails its CRC: the whole fetch is refused."""
    archive = make_zip(tmp_path / "crc.zip", compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = data.index(b"Flat\n") + 2
    data[at] ^= 0x20
    archive.write_bytes(bytes(data))
    refused(tmp_path, archive, "crc|CRC")


def test_zip_without_samples(tmp_path: Path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("README.md", "hello")
        z.writestr("data/a.txt", "Dot\n1,1\n")
    refused(tmp_path, archive, "no HOMUS files")


def test_failed_fetch_keeps_a_previous_readme(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "README.md").write_text("keep me\n")
    with pytest.raises(FetchError):
        fetch(raw, "v2", str(make_zip(tmp_path / "h.zip", _symlink)))
    assert sorted(os.listdir(raw)) == ["README.md"]
