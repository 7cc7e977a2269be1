"""End to end through the ``homus`` command: fetch, then render variant folders, atomically and reproducibly."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import HOMUS_V2_SHA256

import homus_render
from homus.cli import main
from homus_render.dataset import DATASET_INFO, list_stroke_files
from homus_render.labels import LABEL_SET
from homus_render.render import RenderSettings, render
from homus_render.strokes import parse_file

WRITERS = ("1", "2", "3")
SMALL_ARGS = ("--thickness", "1,3", "--size", "32,48", "--jobs", "2")
SMALL_NAMES = ["t1-s32", "t1-s48", "t3-s32", "t3-s48"]


def files_hash(raw, files: list[str]) -> str:
    """The content hash of ``files`` under ``raw``, computed here from their bytes."""
    from pathlib import Path

    from homus_render.dataset import content_hash, file_digest

    return content_hash({rel: file_digest(Path(raw, rel).read_bytes()) for rel in files})


def homus(*args) -> Result:
    """Run ``homus ARGS`` in-process; unexpected exceptions propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ok(*args) -> Result:
    r = homus(*args)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test reads ./pipeline.yaml or writes ./raw or ./rendered of the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOMUS_SOURCE", raising=False)


@pytest.fixture(scope="module")
def small_zip(homus_zip: Path, tmp_path_factory) -> Path:
    """A HOMUS zip of writers 1-3 only, cut from the real one (in tmp, never in the repository)."""
    out = tmp_path_factory.mktemp("zip") / "HOMUS-3.zip"
    with zipfile.ZipFile(homus_zip) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for m in src.infolist():
            parts = m.filename.split("/")
            if len(parts) == 3 and parts[1] in WRITERS and parts[2].endswith(".txt"):
                dst.writestr(m.filename, src.read(m))
    return out


@pytest.fixture(scope="module")
def fetched(small_zip: Path, tmp_path_factory) -> tuple[Path, Result]:
    """``homus fetch`` of the three-writer zip: (raw dir, CLI result)."""
    raw = tmp_path_factory.mktemp("fetched") / "raw"
    return raw, homus("fetch", "--source", small_zip, "--raw-dir", raw)


@pytest.fixture(scope="module")
def raw3(fetched) -> Path:
    raw, result = fetched
    assert result.exit_code == 0, result.output
    return raw


@pytest.fixture(scope="module")
def rendered4(raw3: Path, tmp_path_factory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("rendered4") / "rendered"
    return out, homus("render", "--raw-dir", raw3, "--rendered-dir", out, *SMALL_ARGS)


def copy_raw(raw: Path, dest: Path) -> Path:
    shutil.copytree(raw, dest)
    return dest


def read_manifest(vdir: Path) -> tuple[list[str], list[dict]]:
    with open(vdir / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def border_is_blank(img: np.ndarray) -> bool:
    return bool((img[0] == 255).all() and (img[-1] == 255).all() and (img[:, 0] == 255).all()
                and (img[:, -1] == 255).all())


# --- fetch -----------------------------------------------------------------------------------


def test_fetch(fetched, small_zip: Path):
    raw, result = fetched
    assert result.exit_code == 0, result.output
    assert "456 samples, 3 writers, 32 labels" in result.output
    assert "warning: expected 15,200 samples" in result.output  # only three writers
    files = list_stroke_files(raw)
    assert len(files) == 456 and {f.split("/")[0] for f in files} == set(WRITERS)
    info = json.loads((raw / DATASET_INFO).read_text())
    assert info["sha256"] == files_hash(raw, files) and info["sha256"] in result.output
    again = ok("fetch", "--source", small_zip, "--raw-dir", raw)
    assert "already there, nothing to do" in again.output


def test_fetch_full_already_there(raw_full: Path, homus_zip: Path):
    r = ok("fetch", "--source", homus_zip, "--raw-dir", raw_full)
    assert "15,200 samples, 100 writers, 32 labels" in r.output and "already there" in r.output


def test_fetch_errors_exit_non_zero(tmp_path: Path):
    r = homus("fetch", "--source", "http://127.0.0.1:9/x.zip", "--raw-dir", tmp_path / "a")
    assert r.exit_code == 1 and "--source" in r.output and "error:" in r.output
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("HOMUS/../../1/1-1.txt", "Dot\n1,1\n")
    r = homus("fetch", "--source", bad, "--raw-dir", tmp_path / "b")
    assert r.exit_code == 1 and "would escape" in r.output
    assert not (tmp_path / "b" / DATASET_INFO).exists()
    r = homus("fetch", "--version", "v3", "--source", bad, "--raw-dir", tmp_path / "c")
    assert r.exit_code == 2 and "v3" in r.output


# --- render: layout ----------------------------------------------------------------------------


def test_render_four_variants(rendered4, raw3: Path):
    out, result = rendered4
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == SMALL_NAMES  # and nothing hidden left behind
    for name in SMALL_NAMES:
        assert f"{out / name}  456 images  (rendered)" in result.output


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_variant_folder(rendered4, raw3: Path, name: str):
    out, _ = rendered4
    vdir = out / name
    t, size = int(name[1]), int(name.split("-s")[1])
    settings = RenderSettings(thickness=t, width=size, height=size)
    assert settings.name == name

    header, rows = read_manifest(vdir)
    assert header == ["path", "label", "writer", "sample"]
    raw_files = list_stroke_files(raw3)
    assert len(rows) == len(raw_files) == 456
    assert [r["sample"] for r in rows] == [Path(f).stem for f in raw_files]  # natural order
    pngs = sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*.png") if p.name != "preview.png")
    assert sorted(r["path"] for r in rows) == pngs  # a row per image, an image per row
    for r in rows:
        assert r["path"] == f"{r['label']}/{r['sample']}.png"
        assert r["label"] in LABEL_SET
        assert r["writer"] == r["sample"].split("-")[0] and r["writer"] in WRITERS
        raw_label = (raw3 / r["writer"] / f"{r['sample']}.txt").read_text().splitlines()[0].strip()
        assert r["label"] == raw_label
    assert {p.name for p in vdir.iterdir() if p.is_dir()} <= LABEL_SET

    images = []
    for r in rows:
        img = cv2.imread(str(vdir / r["path"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint8 and img.shape == (size, size), r["path"]
        images.append(img)
    stack = np.stack(images)
    assert (stack[:, 0, :] == 255).all() and (stack[:, -1, :] == 255).all()
    assert (stack[:, :, 0] == 255).all() and (stack[:, :, -1] == 255).all()
    assert (stack.reshape(len(rows), -1).min(axis=1) < 128).all()  # every image has ink

    # the pixels are exactly what the renderer makes of the raw file
    for r in rows[::97]:
        sample = parse_file(raw3 / r["writer"] / f"{r['sample']}.txt")
        expected = render(sample.strokes, settings)
        assert np.array_equal(cv2.imread(str(vdir / r["path"]), cv2.IMREAD_GRAYSCALE), expected)

    info = json.loads((vdir / "variant.json").read_text())
    assert info["name"] == name
    assert info["settings"] == settings.to_dict()
    assert RenderSettings.from_dict(info["settings"]) == settings
    homus_json = json.loads((raw3 / DATASET_INFO).read_text())
    assert info["dataset"]["sha256"] == homus_json["sha256"] == files_hash(raw3, raw_files)
    assert info["dataset"]["version"] == "v2"
    assert (info["dataset"]["samples"], info["dataset"]["writers"], info["dataset"]["labels"]) == (456, 3, 32)
    assert info["homus_version"] == homus_render.__version__ == importlib.metadata.version("homus")
    assert info["images"] == 456 and info["skipped"] == 0
    assert not (vdir / "skipped.csv").exists()

    preview = cv2.imread(str(vdir / "preview.png"), cv2.IMREAD_UNCHANGED)
    assert preview is not None and preview.ndim == 2
    assert preview.shape[0] >= 32 * 64 and preview.min() == 0  # a row per class, with ink


def test_rerun_is_up_to_date(rendered4, raw3: Path):
    out, _ = rendered4
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = ok("render", "--raw-dir", raw3, "--rendered-dir", out, *SMALL_ARGS)
    for name in SMALL_NAMES:
        assert f"{out / name}  456 images  (up to date)" in r.output
    assert "(rendered)" not in r.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# --- render: reproducibility ----------------------------------------------------------------


def test_force_and_jobs_give_identical_bytes(raw3: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    ok("render", "--raw-dir", raw3, "--rendered-dir", a, "--thickness", "3", "--size", "32", "--jobs", "2")
    first = tree_bytes(a)
    assert len([k for k in first if k.endswith(".png")]) == 457  # 456 images and the preview
    r = ok("render", "--raw-dir", raw3, "--rendered-dir", a, "--thickness", "3", "--size", "32", "--jobs", "2",
           "--force")
    assert "(rendered)" in r.output
    assert tree_bytes(a) == first
    ok("render", "--raw-dir", raw3, "--rendered-dir", b, "--thickness", "3", "--size", "32", "--jobs", "1")
    assert tree_bytes(b) == first


def test_changed_raw_data_is_rendered_again(raw3: Path, tmp_path: Path):
    raw = copy_raw(raw3, tmp_path / "raw")
    out = tmp_path / "out"
    args = ("render", "--raw-dir", raw, "--rendered-dir", out, "--thickness", "2", "--size", "32", "--jobs", "1")
    ok(*args)
    f = raw / "2" / "2-7.txt"
    f.write_text(f.read_text().splitlines()[0] + "\n0,0;10,10;\n")  # same label, new strokes
    r = ok(*args)
    assert "(rendered)" in r.output
    _, rows = read_manifest(out / "t2-s32")
    png = next(out / "t2-s32" / row["path"] for row in rows if row["sample"] == "2-7")
    expected = render(parse_file(f).strokes, RenderSettings(thickness=2, width=32, height=32))
    assert np.array_equal(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), expected)


# --- render: bad data and killed runs -------------------------------------------------------


@pytest.fixture
def bad_raw(raw3: Path, tmp_path: Path) -> Path:
    raw = copy_raw(raw3, tmp_path / "bad-raw")
    (raw / "2" / "2-5.txt").write_text("Sharp\n1,2;3,4;\n5,6;x,8;\n")
    return raw


def test_bad_file_stops_render_and_writes_nothing(bad_raw: Path, tmp_path: Path):
    (bad_raw / "3" / "3-10.txt").write_bytes(b"Flat\n1,2;\n\xff\xfe\n")
    out = tmp_path / "out"
    r = homus("render", "--raw-dir", bad_raw, "--rendered-dir", out, "--thickness", "3", "--size", "32,40",
              "--jobs", "2")
    assert r.exit_code == 1
    assert "2 bad stroke file(s); nothing was written" in r.output
    assert f"{bad_raw / '2' / '2-5.txt'}:3: non-numeric coordinate 'x'" in r.output
    assert f"{bad_raw / '3' / '3-10.txt'}:3: undecodable" in r.output
    assert "--skip-invalid" in r.output
    assert not out.exists() or os.listdir(out) == []  # no variant, no hidden staging folder


def test_bad_file_keeps_the_previous_variant(raw3: Path, tmp_path: Path):
    raw = copy_raw(raw3, tmp_path / "raw")
    out = tmp_path / "out"
    args = ("render", "--raw-dir", raw, "--rendered-dir", out, "--thickness", "3", "--size", "32", "--jobs", "1")
    ok(*args)
    before = tree_bytes(out)
    (raw / "1" / "1-3.txt").write_text("Dot\n1,2,3;\n")
    r = homus(*args)
    assert r.exit_code == 1 and "1-3.txt:2: odd coordinates" in r.output
    assert tree_bytes(out) == before
    assert os.listdir(out) == ["t3-s32"]


def test_skip_invalid_renders_the_rest(bad_raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ("render", "--raw-dir", bad_raw, "--rendered-dir", out, "--thickness", "3", "--size", "32",
            "--jobs", "2", "--skip-invalid")
    r = ok(*args)
    vdir = out / "t3-s32"
    assert "skipped 1 bad sample(s)" in r.output and "2-5.txt:3" in r.output
    assert f"{vdir}  455 images  (rendered)" in r.output
    with open(vdir / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert len(skipped) == 1
    assert skipped[0]["file"] == "2/2-5.txt"
    assert ":3: non-numeric coordinate 'x'" in skipped[0]["reason"]
    _, rows = read_manifest(vdir)
    assert len(rows) == 455 and "2-5" not in {row["sample"] for row in rows}
    assert all((vdir / row["path"]).is_file() for row in rows)
    assert not list(vdir.rglob("2-5.png"))
    info = json.loads((vdir / "variant.json").read_text())
    assert info["images"] == 455 and info["skipped"] == 1 and info["dataset"]["samples"] == 455
    # a rerun is up to date and still reports what was skipped
    again = ok(*args)
    assert "(up to date)" in again.output and "2-5.txt:3" in again.output
    # without --skip-invalid the bad file is not hidden behind an up-to-date variant
    strict = homus(*args[:-1])
    assert strict.exit_code == 1 and "2-5.txt:3" in strict.output
    assert (vdir / "variant.json").is_file()  # and what was good stays


def test_every_file_bad(tmp_path: Path):
    raw = tmp_path / "raw"
    (raw / "1").mkdir(parents=True)
    (raw / "1" / "1-1.txt").write_text("Nonsense\n1,1\n")
    r = homus("render", "--raw-dir", raw, "--rendered-dir", tmp_path / "out", "--size", "32", "--jobs", "1",
              "--skip-invalid")
    assert r.exit_code == 1 and "every stroke file is bad" in r.output
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_leftover_staging_folder_is_cleaned_not_trusted(raw3: Path, tmp_path: Path):
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()  # the pid of a process that has ended: its staging folder is a leftover
    stale = out / f".t3-s32.partial-{dead.pid}"
    (stale / "Dot").mkdir(parents=True)
    (stale / "Dot" / "1-1.png").write_bytes(b"not a png")
    (stale / "variant.json").write_text("{}")
    (stale / "manifest.csv").write_text("path,label,writer,sample\nDot/1-1.png,Dot,1,1-1\n")
    r = ok("render", "--raw-dir", raw3, "--rendered-dir", out, "--thickness", "3", "--size", "32", "--jobs", "1")
    assert "456 images  (rendered)" in r.output
    assert os.listdir(out) == ["t3-s32"]
    _, rows = read_manifest(out / "t3-s32")
    assert len(rows) == 456
    for p in (out / "t3-s32").rglob("*.png"):
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None, p


def test_variant_without_info_is_rendered_again(raw3: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ("render", "--raw-dir", raw3, "--rendered-dir", out, "--thickness", "3", "--size", "32", "--jobs", "1")
    ok(*args)
    vdir = out / "t3-s32"
    whole = tree_bytes(vdir)
    (vdir / "variant.json").unlink()  # a run killed before its last write
    (vdir / "Dot" / "junk.png").write_bytes(b"junk")
    next(vdir.rglob("1-1.png")).write_bytes(b"torn")
    r = ok(*args)
    assert f"{vdir}  456 images  (rendered)" in r.output
    assert tree_bytes(vdir) == whole
    assert os.listdir(out) == ["t3-s32"]


def test_missing_raw_dir(tmp_path: Path):
    r = homus("render", "--raw-dir", tmp_path / "nope", "--rendered-dir", tmp_path / "out")
    assert r.exit_code == 1 and "homus fetch" in r.output


def test_invalid_settings_flag(raw3: Path, tmp_path: Path):
    r = homus("render", "--raw-dir", raw3, "--rendered-dir", tmp_path / "out", "--thickness", "0")
    assert r.exit_code == 2 and "thickness" in r.output
    assert not (tmp_path / "out").exists()


# --- config --------------------------------------------------------------------------------


def test_config_unknown_key(raw3: Path, tmp_path: Path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("render:\n  thicknes: 2\n")
    r = homus("render", "--config", cfg, "--raw-dir", raw3, "--rendered-dir", tmp_path / "out")
    assert r.exit_code != 0
    assert "render.thicknes" in r.output and "mine.yaml" in r.output
    assert not (tmp_path / "out").exists()


def test_config_is_honoured_and_flags_override_it(raw3: Path, tmp_path: Path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"dataset:\n  raw_dir: {raw3}\nrender:\n  thickness: 2\n  size: 40x32\n  jobs: 1\n"
                   f"  rendered_dir: {tmp_path / 'from-config'}\n")
    r = ok("render", "--config", cfg)
    assert os.listdir(tmp_path / "from-config") == ["t2-s40x32"]
    img = cv2.imread(str(next((tmp_path / "from-config" / "t2-s40x32").rglob("1-1.png"))), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 40)
    assert "456 images  (rendered)" in r.output
    out = tmp_path / "flags"
    ok("render", "--config", cfg, "--thickness", "1", "--rendered-dir", out)
    assert os.listdir(out) == ["t1-s40x32"]  # thickness from the flag, size from the file
    assert json.loads((out / "t1-s40x32" / "variant.json").read_text())["settings"]["thickness"] == 1


def test_default_config_in_the_working_directory(raw3: Path, tmp_path: Path):
    """Without --config, ./pipeline.yaml of the working directory is read."""
    (tmp_path / "pipeline.yaml").write_text(f"dataset:\n  raw_dir: {raw3}\nrender:\n  size: 24\n  jobs: 1\n")
    ok("render")
    assert os.listdir(tmp_path / "rendered") == ["t3-s24"]


# --- the whole dataset ---------------------------------------------------------------------


def test_render_full_dataset(raw_full: Path, tmp_path: Path):
    out = tmp_path / "rendered"
    r = ok("render", "--raw-dir", raw_full, "--rendered-dir", out, "--thickness", "3", "--size", "96",
           "--jobs", "2")
    vdir = out / "t3-s96"
    assert f"{vdir}  15,200 images  (rendered)" in r.output
    assert os.listdir(out) == ["t3-s96"]
    classes = sorted(p.name for p in vdir.iterdir() if p.is_dir())
    assert set(classes) == LABEL_SET and len(classes) == 32
    header, rows = read_manifest(vdir)
    assert header == ["path", "label", "writer", "sample"] and len(rows) == 15_200
    assert len({row["writer"] for row in rows}) == 100
    assert all(row["writer"] == row["sample"].split("-")[0] for row in rows)
    pngs = [p for c in classes for p in (vdir / c).iterdir()]
    assert len(pngs) == 15_200
    assert sorted(p.relative_to(vdir).as_posix() for p in pngs) == sorted(row["path"] for row in rows)
    touching = []
    for p in pngs:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        assert img is not None and img.shape == (96, 96), p
        if not border_is_blank(img):
            touching.append(p.name)
    assert touching == []
    info = json.loads((vdir / "variant.json").read_text())
    assert info["dataset"]["sha256"] == HOMUS_V2_SHA256
    assert (info["dataset"]["samples"], info["dataset"]["writers"], info["dataset"]["labels"]) == (15_200, 100, 32)


def test_staging_folder_of_a_live_render_is_left_alone(raw3: Path, tmp_path: Path):
    out = tmp_path / "out"
    busy = out / f".t3-s32.partial-{os.getppid()}"  # a process that is still running
    busy.mkdir(parents=True)
    ok("render", "--raw-dir", raw3, "--rendered-dir", out, "--thickness", "3", "--size", "32", "--jobs", "1")
    assert busy.is_dir() and (out / "t3-s32" / "variant.json").is_file()
