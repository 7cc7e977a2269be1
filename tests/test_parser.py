"""The stroke file parser: what it accepts, and the exact line and reason of what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sample_text

from homus_render.labels import LABELS
from homus_render.strokes import MAX_COORD, Sample, StrokeFileError, parse_file, parse_text, sample_identity


def arrays(sample: Sample) -> list[list[list[float]]]:
    return [s.tolist() for s in sample.strokes]


# --- good input --------------------------------------------------------------------------------


def test_plain_file():
    s = parse_text("Quarter-Note\n10,20;11,22;12,24;\n30,40;31,41;\n", "HOMUS/12/12-34.txt")
    assert isinstance(s, Sample)
    assert s.label == "Quarter-Note"
    assert (s.id, s.writer) == ("12-34", "12")
    assert arrays(s) == [[[10, 20], [11, 22], [12, 24]], [[30, 40], [31, 41]]]
    for stroke in s.strokes:
        assert stroke.dtype == np.float64 and stroke.ndim == 2 and stroke.shape[1] == 2


def test_crlf_spaces_blank_lines_and_no_trailing_semicolon():
    text = "  Sharp  \r\n\r\n 1, 2 ; 3 ,4;\r\n   \r\n\r\n-5,-6;-7,-8\r\n\r\n"
    s = parse_text(text, "7-1.txt")
    assert s.label == "Sharp"
    assert arrays(s) == [[[1, 2], [3, 4]], [[-5, -6], [-7, -8]]]


def test_same_result_for_lf_and_crlf():
    strokes = [[(0, 0), (5, 5)], [(3, 1)]]
    a = parse_text(sample_text("Dot", strokes), "1-1.txt")
    b = parse_text(sample_text("Dot", strokes, newline="\r\n"), "1-1.txt")
    assert a.label == b.label and arrays(a) == arrays(b) == [[[0, 0], [5, 5]], [[3, 1]]]


def test_negative_fractional_and_repeated_points():
    s = parse_text("Dot\n-100,-200;-100,-200;-100,-200;\n0.5,-1.25;+3,4\n", "3-9.txt")
    assert arrays(s) == [[[-100, -200]] * 3, [[0.5, -1.25], [3, 4]]]


def test_single_point_stroke():
    s = parse_text("Dot\n5,5;\n", "1-2.txt")
    assert arrays(s) == [[[5, 5]]]


def test_coordinates_at_the_limit_are_accepted():
    limit = int(MAX_COORD)
    s = parse_text(f"Dot\n{limit},-{limit};0,0\n", "1-1.txt")
    assert arrays(s) == [[[limit, -limit], [0, 0]]]


def test_utf8_bom_before_the_label(tmp_path):
    path = tmp_path / "4-2.txt"
    path.write_bytes(b"\xef\xbb\xbfFlat\n1,1;2,2;\n")
    assert parse_file(path).label == "Flat"


@pytest.mark.parametrize("label", LABELS)
def test_every_label_is_accepted(label):
    assert parse_text(f"{label}\n1,2;3,4\n", "1-1.txt").label == label


@pytest.mark.parametrize("path,ident", [
    ("HOMUS/12/12-34.txt", ("12-34", "12")),
    ("/data/raw/100/100-152.txt", ("100-152", "100")),
    ("1-1.txt", ("1-1", "1")),
    ("raw/5/7-3.txt", ("7-3", "7")),
    ("some/folder/strange name.txt", ("strange name", "folder")),
])
def test_sample_identity_from_the_file_name(path, ident):
    assert sample_identity(path) == ident
    assert (parse_text("Dot\n1,1\n", path).id, parse_text("Dot\n1,1\n", path).writer) == ident


def test_parse_file_reads_a_file(tmp_path):
    d = tmp_path / "42"
    d.mkdir()
    path = d / "42-7.txt"
    path.write_bytes(b"G-Clef\r\n1,2;3,4;\r\n5,6;\r\n")
    s = parse_file(path)
    assert (s.id, s.writer, s.label) == ("42-7", "42", "G-Clef")
    assert arrays(s) == [[[1, 2], [3, 4]], [[5, 6]]]


def test_careful_and_fast_paths_agree():
    """A well-formed integer file and the same with one fractional value parse alike."""
    a = parse_text("Dot\n1,2;3,4;\n5,6;7,8;\n", "1-1.txt")
    b = parse_text("Dot\n1,2;3,4;\n5,6;7,8.0;\n", "1-1.txt")
    assert arrays(a) == arrays(b)


# --- bad input ---------------------------------------------------------------------------------

BAD = [
    # (id, text, line, words the reason must contain)
    ("empty", "", None, "empty file"),
    ("whitespace-only", "  \n\t\r\n\n ", None, "empty file"),
    ("line-1-blank", "\nDot\n1,2;3,4\n", 1, "missing label"),
    ("line-1-coordinates", "1,2;3,4;\n5,6;7,8\n", 1, "missing label"),
    ("unknown-label", "Trumpet\n1,2;3,4\n", 1, "unknown label 'Trumpet'"),
    ("label-case", "dot\n1,2\n", 1, "unknown label 'dot'"),
    ("non-numeric", "Dot\n1,2;a,4;\n", 2, "non-numeric coordinate 'a'"),
    ("non-numeric-later-line", "Dot\n1,2;3,4\n\n\n5,6;7,x7\n", 5, "non-numeric coordinate 'x7'"),
    ("three-values", "Dot\n1,2;3,4,5;\n", 2, "3 values"),
    ("one-value", "Dot\n1,2;\n3;\n", 3, "1 values"),
    ("odd-values-even-total", "Dot\n1,2,3;4;\n", 2, "odd coordinates"),
    ("odd-values-even-total-2", "Dot\n0,0\n1;2,3,4\n", 3, "odd coordinates"),
    ("empty-point", "Dot\n1,2;;3,4;\n", 2, "empty point"),
    ("leading-empty-point", "Dot\n;1,2\n", 2, "empty point"),
    ("too-big", "Dot\n1,2;100001,4\n", 2, "beyond any tablet"),
    ("too-negative", "Dot\n1,2\n3,4;5,-250000\n", 3, "beyond any tablet"),
    ("overflowing-integer", "Dot\n1,2;" + "9" * 400 + ",4\n", 2, "9999"),  # not an OverflowError
    ("nan", "Dot\n1,2;nan,4\n", 2, "non-numeric coordinate 'nan'"),
    ("inf", "Dot\n1,2\n-inf,4\n", 3, "non-numeric coordinate '-inf'"),
    ("infinity", "Dot\n1,2;Infinity,4\n", 2, "'Infinity'"),
]


@pytest.mark.parametrize("text,line,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_line_and_reason(text, line, words):
    with pytest.raises(StrokeFileError) as info:
        parse_text(text, "raw/5/5-17.txt")
    e = info.value
    assert e.path == "raw/5/5-17.txt"
    assert e.line == line
    assert words in e.reason
    where = "raw/5/5-17.txt" if line is None else f"raw/5/5-17.txt:{line}:"
    assert str(e).startswith(where)
    assert e.reason in str(e)
    assert isinstance(e, ValueError)


def test_label_with_no_strokes():
    for text in ("Dot", "Dot\n", "Dot\n\n  \n\r\n"):
        with pytest.raises(StrokeFileError) as info:
            parse_text(text, "2-3.txt")
        assert info.value.line in (None, 1)
        assert "no strokes" in info.value.reason and "Dot" in info.value.reason


def test_coordinate_beyond_the_limit_is_named():
    with pytest.raises(StrokeFileError) as info:
        parse_text("Dot\n1,2;3,-100000.5\n", "1-1.txt")
    assert "-100000.5" in info.value.reason


def test_undecodable_bytes_mid_file(tmp_path):
    path = tmp_path / "9-3.txt"
    path.write_bytes(b"Sharp\n1,2;3,4;\n5,6;7,8;\n9,\xff\xfe10;\n")
    with pytest.raises(StrokeFileError) as info:
        parse_file(path)
    e = info.value
    assert e.line == 4
    assert "undecodable" in e.reason and "offset" in e.reason
    assert str(e).startswith(f"{path}:4:")


def test_binary_file(tmp_path):
    path = tmp_path / "9-4.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xff")
    with pytest.raises(StrokeFileError) as info:
        parse_file(path)
    assert info.value.line is not None and info.value.line >= 1


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        parse_file(tmp_path / "nope.txt")
