"""Rendering many samples at once, and the stroke index that spares a render from parsing.

``render_packed`` must give :func:`render`'s images byte for byte, and a render that reads the
index must write exactly the files of one that parses; an index that is stale, damaged or
foreign is never believed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_text, synthetic_samples

from homus_render.dataset import file_stats, list_stroke_files, load_samples
from homus_render.errors import PathError
from homus_render.fetch import fetch
from homus_render.index import INDEX, INDEX_FORMAT, StrokeIndex, parser_identity, read_index
from homus_render.render import RenderSettings, render, render_packed
from homus_render.strokes import Packed
from homus_render.variants import RenderError, render_variants

SETTINGS = [
    RenderSettings(thickness=3, width=64, height=64),
    RenderSettings(thickness=1, width=32, height=32, margin=0),  # ink at the edges: drawn alone
    RenderSettings(thickness=5, width=48, height=40, margin=0),
    RenderSettings(thickness=2, width=40, height=56, margin=1, antialias=False),
    RenderSettings(thickness=1, width=24, height=24, margin=0, antialias=False),
    RenderSettings(thickness=3, width=64, height=64, staff_lines=True),
    RenderSettings(thickness=9, width=24, height=20, margin=0, staff_lines=True, staff_spacing=3),
    RenderSettings(thickness=4, width=48, height=48, fit="crop"),
]


def odd_symbols() -> list[tuple[np.ndarray, ...]]:
    """Symbols that test the edges of drawing: a single point, a pen that never moved, lines
    without height or width, a tiny step, far-off points, and random scribbles."""
    rng = np.random.default_rng(0)
    odd = [(np.array([[5.0, 5.0]]),), (np.array([[0.0, 0.0], [10.0, 0.0]]),),
           (np.array([[0.0, 0.0], [0.0, 30.0]]), np.array([[3.0, 3.0], [3.0, 3.0]])),
           (np.array([[1.0, 1.0]] * 3),), (np.array([[0.0, 0.0], [1e-9, 0.0]]), np.array([[200.0, 400.0]])),
           # extents so small that the fit overflows (such numbers parse): whatever render draws
           (np.array([[100000.0, 0.0], [100000.0, 1e-300]]),), (np.array([[0.0, 100000.0], [1e-300, 100000.0]]),),
           (np.array([[0.0, 0.0], [1e-320, 0.0]]),)]
    odd += [tuple(rng.uniform(-50, 50, (rng.integers(1, 8), 2)) for _ in range(rng.integers(1, 4)))
            for _ in range(150)]
    return odd


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: s.name)
def test_render_packed_draws_what_render_draws(s: RenderSettings):
    symbols = [tuple(np.asarray(st, np.float64) for st in strokes) for *_, strokes in synthetic_samples()]
    symbols += odd_symbols()
    many = render_packed(Packed.of(symbols), s)
    assert many.shape == (len(symbols), s.height, s.width) and many.dtype == np.uint8
    for i, strokes in enumerate(symbols):
        assert np.array_equal(many[i], render(strokes, s)), f"sample {i} differs"


def test_render_packed_shares_a_canvas_yet_matches_across_canvas_breaks(monkeypatch):
    """Several canvases of a few samples each: the breaks between canvases change nothing."""
    import homus_render.render as R

    symbols = [tuple(np.asarray(st, np.float64) for st in strokes) for *_, strokes in synthetic_samples()][:50]
    s = RenderSettings(thickness=2, width=32, height=32)
    whole = render_packed(Packed.of(symbols), s)
    monkeypatch.setattr(R, "BATCH_PIXELS", 3 * (32 * 4) ** 2)  # three samples per canvas
    assert np.array_equal(render_packed(Packed.of(symbols), s), whole)
    assert render_packed(Packed.of([]), s).shape == (0, 32, 32)


def test_the_set_renderer_of_runs_from_strokes_draws_the_same_ink():
    """channels.render_many (test and validation images of runs from strokes) draws what render
    and render_packed draw (one by one: it runs where loader workers are forked next)."""
    from homus_render.channels import render_many

    symbols = [tuple(np.asarray(st, np.float64) for st in strokes) for *_, strokes in synthetic_samples()][:80]
    s = RenderSettings(thickness=3, width=32, height=32)
    assert np.array_equal(render_many(symbols, s), render_packed(Packed.of(symbols), s))
    both = render_many(symbols, s, ("ink", "time"))
    assert both.shape == (80, 2, 32, 32) and np.array_equal(both[:, 0], render_many(symbols, s))


def test_packed_round_trip_slices_and_bad_counts():
    symbols = odd_symbols()[:20]
    packed = Packed.of(symbols)
    assert len(packed) == 20
    for got, want in zip(packed.unpack(), symbols, strict=True):
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    part = packed.slice(5, 9).unpack()
    assert len(part) == 4 and all(np.array_equal(a, b) for a, b in zip(part[0], symbols[5], strict=True))
    with pytest.raises(ValueError, match="counts must add up"):
        Packed(np.zeros((3, 2)), np.array([2]), np.array([1]))
    with pytest.raises(ValueError, match="counts must add up"):
        Packed(np.zeros((0, 2)), np.array([0]), np.array([1]))  # an empty stroke


# --- the stroke index ---------------------------------------------------------------------------

@pytest.fixture
def raw(synthetic_raw: Path, tmp_path: Path) -> Path:
    # without any index an earlier test's render left in the shared folder: each test starts bare
    shutil.copytree(synthetic_raw, tmp_path / "raw", ignore=shutil.ignore_patterns(INDEX))
    return tmp_path / "raw"


def rendered_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a rendered variant, by relative path (variant.json aside: it records times)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "variant.json"}


def render_logged(raw: Path, out: Path, s: RenderSettings, **kw) -> tuple[Path, list[str]]:
    lines: list[str] = []
    [result] = render_variants(raw, out, [s], jobs=1, log=lines.append, **kw)
    return result.path, lines


S = RenderSettings(thickness=2, width=32, height=32)


def test_a_render_writes_the_index_and_the_next_reads_it_with_the_same_files(raw: Path, tmp_path: Path):
    assert not (raw / INDEX).exists()
    first, log1 = render_logged(raw, tmp_path / "a", S)
    index = read_index(raw)
    files = list_stroke_files(raw)
    assert index is not None and index.files == files and len(index.packed) == len(files) == 576
    assert not any("stroke index" in line for line in log1)
    second, log2 = render_logged(raw, tmp_path / "b", S)
    assert any("576 from the stroke index" in line for line in log2)
    assert rendered_bytes(first) == rendered_bytes(second)
    # what the index holds is what the parser reads
    for got, sample in zip(index.packed.unpack(), load_samples(raw), strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(got, sample.strokes, strict=True))
    assert index.labels == [s.label for s in load_samples(raw)]


def test_force_reads_every_file_again(raw: Path, tmp_path: Path):
    render_logged(raw, tmp_path / "a", S)
    before = (raw / INDEX).stat().st_mtime_ns
    _, log = render_logged(raw, tmp_path / "a", S, force=True)
    assert not any("from the stroke index" in line for line in log)
    assert (raw / INDEX).stat().st_mtime_ns != before and read_index(raw) is not None


def test_a_file_rewritten_with_its_old_size_and_time_is_parsed_again(raw: Path, tmp_path: Path):
    """Same size, modification time put back (as cp -p or rsync -t do): the inode's change time
    still tells, so the index's entry is not used."""
    render_logged(raw, tmp_path / "a", S)
    path = raw / "3/3-7.txt"
    old, st = path.read_text(), path.stat()
    label = old.splitlines()[0]
    body = "0,0;30,0;30,30;\n"
    new = label + "\n" + body.rjust(len(old) - len(label) - 1, " ")  # same length, other strokes
    assert len(new) == len(old)
    path.write_text(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out, log = render_logged(raw, tmp_path / "b", S)
    assert any("575 from the stroke index" in line for line in log)
    import cv2

    img = cv2.imread(str(out / label / "3-7.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(img, render([np.array([[0, 0], [30, 0], [30, 30]], np.float64)], S))


def test_a_changed_file_is_parsed_again(raw: Path, tmp_path: Path):
    render_logged(raw, tmp_path / "a", S)
    path = raw / "2/2-5.txt"
    label = path.read_text().splitlines()[0]
    new = [[(0, 0), (40, 0), (40, 40)]]
    path.write_text(sample_text(label, new))
    os.utime(path, ns=(1, 1))  # another time: the index's entry no longer applies
    out, log = render_logged(raw, tmp_path / "b", S)
    assert any("575 from the stroke index" in line for line in log)
    import cv2

    img = cv2.imread(str(out / label / "2-5.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(img, render([np.array(new[0], np.float64)], S))
    index = read_index(raw)
    i = index.files.index("2/2-5.txt")
    assert tuple(index.stats[i]) == tuple(file_stats(raw, ["2/2-5.txt"])[0])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other format", "other parser", "counts", "label",
                                    "files 2-D", "nan point", "raw member", "digest"])
def test_a_damaged_or_foreign_index_is_ignored_and_replaced(raw: Path, tmp_path: Path, damage: str):
    good, _ = render_logged(raw, tmp_path / "a", S)
    expected = rendered_bytes(good)
    data = (raw / INDEX).read_bytes()
    index = read_index(raw)
    if damage == "garbage":
        (raw / INDEX).write_bytes(b"not an index at all")
    elif damage == "truncated":
        (raw / INDEX).write_bytes(data[: len(data) // 2])
    elif damage == "other format":
        np.savez(raw / INDEX, format=np.array([INDEX_FORMAT + 1]))
    elif damage == "raw member":  # a zip member that is not an array at all
        import zipfile

        with zipfile.ZipFile(raw / INDEX, "w") as z:
            z.writestr("format", b"1")
    else:
        fields = dict(format=np.array([INDEX_FORMAT]), parser=np.array(parser_identity()), files=np.array(index.files),
                      stats=index.stats, digests=np.array(index.digests), labels=np.array(index.labels),
                      points=index.packed.points, stroke_lengths=index.packed.stroke_lengths,
                      n_strokes=index.packed.n_strokes)
        if damage == "other parser":
            fields["parser"] = np.array("0" * 64)
        elif damage == "counts":  # one stroke count too many: the layout does not add up
            fields["n_strokes"] = index.packed.n_strokes + 1
        elif damage == "label":  # a label is also a folder name: never one from a foreign file
            fields["labels"] = np.array(["../../outside"] + index.labels[1:])
        elif damage == "files 2-D":
            fields["files"] = np.array(index.files).reshape(-1, 2)
        elif damage == "nan point":
            points = index.packed.points.copy()
            points[5, 1] = np.nan
            fields["points"] = points
        else:
            fields["digests"] = np.array(["not a digest"] * len(index.files))
        np.savez(raw / INDEX, **fields)
    assert read_index(raw) is None
    out, log = render_logged(raw, tmp_path / "b", S)
    assert not any("from the stroke index" in line for line in log)
    assert rendered_bytes(out) == expected
    assert read_index(raw) is not None and read_index(raw).files == index.files


def test_a_subset_render_uses_the_index_but_never_writes_it(raw: Path, tmp_path: Path):
    render_logged(raw, tmp_path / "a", S, writers={"1", "2"})
    assert not (raw / INDEX).exists()
    render_logged(raw, tmp_path / "b", S)
    before = (raw / INDEX).stat().st_mtime_ns
    _, log = render_logged(raw, tmp_path / "c", S, writers={"3"})
    assert any("96 from the stroke index" in line for line in log)
    assert (raw / INDEX).stat().st_mtime_ns == before


def test_a_bad_file_stays_out_of_the_index_and_is_reported_every_time(raw: Path, tmp_path: Path):
    """The files that parse are indexed even by a render that a bad file stops, so the rerun after
    the fix parses only what changed."""
    (raw / "1/1-3.txt").write_text("Dot\n1,2;3\n")
    for out in ("a", "b"):
        with pytest.raises(RenderError, match=r"1-3\.txt:2: odd coordinates"):
            render_variants(raw, tmp_path / out, [S], jobs=1)
        index = read_index(raw)
        assert index is not None and "1/1-3.txt" not in index.files and len(index.files) == 575
    render_variants(raw, tmp_path / "c", [S], jobs=1, skip_invalid=True)
    with pytest.raises(RenderError, match=r"1-3\.txt:2: odd coordinates"):
        render_variants(raw, tmp_path / "d", [S], jobs=1)
    (raw / "1/1-3.txt").write_text(sample_text("Dot", [[(1, 2), (3, 4)]]))
    _, log = render_logged(raw, tmp_path / "e", S)
    assert any("575 from the stroke index" in line for line in log)
    assert len(read_index(raw).files) == 576


def test_a_raw_folder_that_cannot_take_the_index_still_renders(raw: Path, tmp_path: Path, monkeypatch):
    import homus_render.variants as V

    def refuse(folder, index):
        raise PathError(f"{folder}: read-only folder")

    monkeypatch.setattr(V, "write_index", refuse)
    out, log = render_logged(raw, tmp_path / "a", S)
    assert any("stroke index not written" in line and "read-only" in line for line in log)
    assert not (raw / INDEX).exists() and len(list(out.glob("*/*.png"))) == 576


def test_parallel_render_with_the_index_writes_the_same_files(raw: Path, tmp_path: Path):
    first, _ = render_logged(raw, tmp_path / "a", S)
    [second] = render_variants(raw, tmp_path / "b", [S], jobs=2)
    assert rendered_bytes(first) == rendered_bytes(second.path)


def test_fetch_writes_the_index_of_what_it_checked(synthetic_raw: Path, tmp_path: Path):
    fetch(tmp_path / "raw", "v2", str(synthetic_raw))
    index = read_index(tmp_path / "raw")
    assert isinstance(index, StrokeIndex) and index.files == list_stroke_files(tmp_path / "raw")
    assert index.lookup(index.files, file_stats(tmp_path / "raw", index.files)) == list(range(576))


def test_an_empty_index_is_harmless(tmp_path: Path):
    """An index of nothing (a raw folder none of whose files parses: fetch refuses such a source) is
    harmless; the render then says what is wrong."""
    from homus_render.fetch import FetchError
    from homus_render.index import StrokeIndex, write_index

    src = tmp_path / "src/1"
    src.mkdir(parents=True)
    (src / "1-1.txt").write_text("Dot\n1,2;3\n")
    with pytest.raises(FetchError, match="none of its 1 stroke files can be read"):
        fetch(tmp_path / "raw", "v2", str(tmp_path / "src"))
    shutil.copytree(tmp_path / "src", tmp_path / "raw")
    write_index(tmp_path / "raw", StrokeIndex.of([], [], [], [], Packed.of([])))
    index = read_index(tmp_path / "raw")
    assert index is not None and index.files == []
    assert index.lookup(["1/1-1.txt", "1/1-2.txt"], [(1, 2, 3, 4)] * 2) == [None, None]
    with pytest.raises(RenderError, match="every stroke file is bad"):
        render_variants(tmp_path / "raw", tmp_path / "out", [S], jobs=1, skip_invalid=True)


def test_names_that_differ_only_in_unicode_digits_are_one_sample_id(tmp_path: Path):
    from homus_render.dataset import DuplicateSampleError

    (tmp_path / "1").mkdir()
    for name in ("1-1.txt", "1-\u0661.txt"):  # ARABIC-INDIC DIGIT ONE reads as 1
        (tmp_path / "1" / name).write_text(sample_text("Dot", [[(1, 1)]]))
    with pytest.raises(DuplicateSampleError, match="same sample id"):
        list_stroke_files(tmp_path)


def test_a_path_too_small_to_fit_is_drawn_as_a_dot_without_warnings():
    """Extents of 1e-300 tablet units parse; the fit must not magnify them until numbers overflow."""
    import warnings

    s = RenderSettings(thickness=3, width=32, height=32)
    dot = render([np.array([[7.0, 7.0]])], s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in ([[1e5, 0.0], [1e5, 1e-300]], [[0.0, 1e5], [1e-300, 1e5]], [[0.0, 0.0], [1e-320, 0.0]]):
            assert np.array_equal(render([np.array(path)], s), dot)
            assert np.array_equal(render_packed(Packed.of([(np.array(path),)]), s)[0], dot)


def test_an_index_is_never_trusted_or_written_without_the_parser_source(raw: Path, tmp_path: Path, monkeypatch):
    import homus_render.index as I

    render_logged(raw, tmp_path / "a", S)
    assert read_index(raw) is not None
    monkeypatch.setattr(I, "parser_identity", lambda: "unknown")
    assert read_index(raw) is None
    (raw / INDEX).unlink()
    render_logged(raw, tmp_path / "b", S)
    assert not (raw / INDEX).exists()


def test_a_digest_with_a_trailing_newline_is_not_a_digest(raw: Path, tmp_path: Path):
    render_logged(raw, tmp_path / "a", S)
    index = read_index(raw)
    np.savez(raw / INDEX, format=np.array([INDEX_FORMAT]), parser=np.array(parser_identity()),
             files=np.array(index.files), stats=index.stats, digests=np.array([d + "\n" for d in index.digests]),
             labels=np.array(index.labels), points=index.packed.points, stroke_lengths=index.packed.stroke_lengths,
             n_strokes=index.packed.n_strokes)
    assert read_index(raw) is None
