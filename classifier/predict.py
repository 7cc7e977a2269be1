"""Classify new inputs with a run's model: images of any size, or raw HOMUS stroke files.

Images are framed the way the renderer frames a symbol: polarity detected, ink found, fitted to
the run's canvas and margin, centred. Stroke files are rendered with the run's own settings.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from homus_render.channels import render_plain
from homus_render.errors import HomusError, describe, user_os_error
from homus_render.normalize import MIN_INK_CONTRAST, READS, check_read, model_view
from homus_render.render import RenderSettings
from homus_render.strokes import MAX_POINTS, MAX_STROKES, StrokeFileError, parse_bytes

from . import checkpoint
from .inference import class_probabilities
from .runfolder import RunFolder

#: The most pixels an input image may have: a phone's photo of a symbol fits, while a small file
#: that claims a huge canvas (a decompression bomb) is refused before it is decoded.
MAX_PIXELS = 100_000_000
#: The most bytes its pixels may take once decoded (channels and depth counted): 100 megapixels of
#: 8-bit RGBA. Decoding, turning upright and greying make a few copies of them.
MAX_DECODED_BYTES = 400_000_000
#: The largest stroke file read: a symbol of :data:`~homus_render.strokes.MAX_POINTS` points, each
#: written out in full, is under half of it.
MAX_STROKE_FILE_BYTES = 1_000_000
#: How image files begin, to tell a damaged image from a file that is no image at all.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))
_HUGE = (-1, -1)  # the size of an image Pillow itself refuses to open as a decompression bomb
#: Formats whose further frames are more pictures (an animation, pages); an MPO's are previews or
#: gain maps of its first, which is the photo.
_ANIMATED = {"GIF", "PNG", "WEBP", "TIFF"}
#: Widths and heights libpng refuses (its default user limit): such PNGs go to Pillow alone.
_LIBPNG_LIMIT = 1_000_000


class InputError(HomusError, ValueError):
    """An input that is neither a readable image nor a stroke file."""


@dataclass(frozen=True)
class _Header:
    """What an image file's header says: its format, (width, height) (None: no readable header;
    :data:`_HUGE`: beyond Pillow's own bomb limit), bytes per decoded pixel, and frames or pages."""

    format: str
    size: tuple[int, int] | None
    pixel_bytes: int = 1
    frames: int = 1


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    """The eight rotations and mirror images of ``img`` (height and width axes)."""
    return [np.rot90(m, k, axes=(0, 1)) for m in (img, img[:, ::-1]) for k in range(4)]


def decode_image(data: bytes, path: str | Path = "image", head: _Header | None = None) -> np.ndarray:
    """An image file's pixels as stored, alpha channel and depth kept, turned upright as its EXIF
    orientation says (OpenCV applies the orientation only when it drops the alpha channel, so the
    turn is found by comparing the two decodings). Formats OpenCV does not read (TGA, ICO, ...)
    are decoded by Pillow. InputError for an empty, unknown, damaged, animated or too large file;
    the size is read from the header (``head``, when the caller has read it) before any pixel is
    decoded."""
    if not data:
        raise InputError(f"{path}: an empty file (0 bytes), not an image")
    head = head or _header(data)
    if head is None:
        raise InputError(f"{path}: neither an image (PNG, JPEG, BMP, TIFF, WebP, GIF, ...) nor a HOMUS stroke file")
    unread = (f"{path}: a damaged or truncated {head.format} file, or a kind of {head.format} that neither OpenCV "
              "nor Pillow reads; convert it to an 8-bit PNG")
    if head.size is None:  # only what a header vouches for is decoded
        raise InputError(unread)
    w, h = head.size
    decoded = w * h * head.pixel_bytes
    claim = ("more pixels than Pillow opens" if head.size == _HUGE else
             f"{w:,} x {h:,} pixels, more than homus reads ({MAX_PIXELS:,})" if w * h > MAX_PIXELS else
             f"{w:,} x {h:,} pixels of {head.pixel_bytes} bytes each, {decoded / 1e6:,.0f} MB decoded, more than homus "
             f"reads ({MAX_DECODED_BYTES / 1e6:,.0f} MB)" if decoded > MAX_DECODED_BYTES else None)
    if claim:
        raise InputError(f"{path}: the image claims {claim}; crop the symbol or scale the image down")
    if head.frames > 1 and head.format in _ANIMATED:
        raise InputError(f"{path}: {head.frames} frames or pages in one {head.format} file; homus reads one symbol "
                         "per image: save the one you mean as an image of its own")
    img = None if head.format == "PNG" and max(w, h) > _LIBPNG_LIMIT else _cv2_decode(data)
    if img is None:
        img = _pillow_decode(data)
    if img is None:
        raise InputError(unread)
    return img


def _cv2_decode(data: bytes) -> np.ndarray | None:
    """The pixels as OpenCV decodes them, turned upright by their EXIF orientation; None when it cannot."""
    buf = np.frombuffer(data, np.uint8)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # a bad file is our one line, not OpenCV's
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        upright = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        stored = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        img = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        return None
    if upright is not None and stored is not None and not np.array_equal(upright, stored):
        for turn, candidate in zip(_dihedral(img), _dihedral(stored), strict=True):
            if candidate.shape == upright.shape and np.array_equal(candidate, upright):
                return np.ascontiguousarray(turn)
    return img


def _pillow_decode(data: bytes) -> np.ndarray | None:
    """The pixels as Pillow decodes them, upright, in OpenCV's layout (grey, BGR or BGRA; 16-bit,
    32-bit integer and float greys kept as they are); None when it cannot."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size was checked against homus' own limits
            with Image.open(io.BytesIO(data)) as opened:
                im = ImageOps.exif_transpose(opened)
                im.load()
                if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                    return np.array(im)
                if "A" in im.getbands() or "transparency" in im.info:
                    return np.ascontiguousarray(np.asarray(im.convert("RGBA"))[..., [2, 1, 0, 3]])
                if im.mode in ("1", "L"):
                    return np.asarray(im.convert("L"))
                return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    except Exception:  # damaged, truncated, or a variant of the format Pillow does not decode
        return None


def _header(data: bytes) -> _Header | None:
    """What ``data``'s header says (:class:`_Header`), read without decoding the pixels: a PNG's
    size from its IHDR chunk (which must come first, whatever the checksums of later chunks say),
    the rest from Pillow. None for data that no image header begins."""
    from PIL import Image

    kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if kind == "WebP" and data[8:12] != b"WEBP":  # RIFF also begins WAV and AVI files
        kind = None
    png = None
    if kind == "PNG" and len(data) >= 26 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        depth, colour = data[24], data[25]
        png = _Header("PNG", (w, h), {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4) * max(1, depth // 8))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the size is checked by the caller
            with Image.open(io.BytesIO(data)) as im:
                depth = {"I": 4, "F": 4}.get(im.mode, 2 if im.mode.startswith("I;16") else 1)
                frames = getattr(im, "n_frames", 1)
                if png is not None:
                    return _Header("PNG", png.size, png.pixel_bytes, frames)
                return _Header(im.format or kind or "image", im.size, len(im.getbands()) * depth, frames)
    except Image.DecompressionBombError:  # beyond Pillow's own limit, which is above ours
        return png or _Header(kind or "image", _HUGE)
    except Exception:  # truncated, damaged, or not an image Pillow knows
        return png or (_Header(kind, None) if kind else None)


def _to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 grayscale of any decoded image. Transparency counts: ink carried only by the alpha
    channel (opaque strokes of one colour on a transparent sheet) is laid on paper of the opposite
    brightness, so it shows."""
    if img.dtype == np.uint16:  # to 0-255 by its own top: a 12-bit scan in a 16-bit file tops out at 4095
        top = int(img.max())
        img = img.astype(np.uint8) if top <= 255 else (img.astype(np.float32) * (255 / top)).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = _levels_to_uint8(img)
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[..., 0]
    if img.shape[2] == 2:
        gray, alpha = img[..., 0], img[..., 1]
    elif img.shape[2] == 4:
        gray, alpha = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY), img[..., 3]
    else:
        return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if alpha.max() == 0:  # nothing is opaque: a blank sheet, whatever colour its hidden pixels hold
        return np.full_like(gray, 255)
    if alpha.min() == alpha.max():
        return gray
    a = alpha.astype(np.float32) / 255
    opaque = gray[alpha >= 128]
    lo, hi = np.percentile(opaque, (1, 99)) if opaque.size else (0, 0)
    if hi - lo >= MIN_INK_CONTRAST:  # the opaque part holds paper and ink: what is transparent is more paper
        paper = float(np.median(opaque))
    else:  # strokes of one colour on a transparent sheet: the sheet is the opposite brightness
        ink = float((gray * a).sum() / max(a.sum(), 1e-6))
        paper = 255.0 if ink < 128 else 0.0
    return np.clip(gray * a + paper * (1 - a), 0, 255).round().astype(np.uint8)


def _levels_to_uint8(img: np.ndarray) -> np.ndarray:
    """0-255 grey levels of an image stored as floats or wide integers: by the range such files use
    (0-1, or 0-255), else stretched between the 0.1st and 99.9th percentiles, so that one stray hot
    pixel does not flatten the rest into one grey."""
    if not np.isfinite(img).all():
        raise InputError("the image holds pixels that are not numbers (NaN or infinity)")
    f = img.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    if lo >= 0 and hi <= 1 and img.dtype.kind == "f":
        f = f * 255
    elif not (lo >= 0 and hi <= 255):
        lo, hi = (float(v) for v in np.percentile(f, (0.1, 99.9)))
        f = (np.clip(f, lo, hi) - lo) * (255 / (hi - lo)) if hi > lo else np.full_like(f, 255)
    return f.round().astype(np.uint8)


def normalize_image(img: np.ndarray, s: RenderSettings, read: str = READS[0]) -> np.ndarray:
    """Any grayscale, colour or transparent image -> black ink on white at the model's canvas, read
    as ``read`` says (:data:`~homus_render.normalize.READS`): its ink box fitted to the canvas minus
    margins (``fit``), fitted with its centre line drawn over it at the model's pen (``thicken``),
    its centre line alone redrawn (``redraw``), or by ``auto``, fitted when the ink is as wide as
    the model's pen and fitting does not enlarge it, else thickened (:mod:`homus_render.normalize`)."""
    _check_read(read)
    img = _to_gray(img)
    # Light ink on dark paper is flipped to dark on light when both the border and the whole sheet
    # are mostly dark: a scan's dark frame owns the border, a tight crop of a filled dot the middle.
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if np.median(border) < 128 and np.median(img) < 128:
        img = 255 - img
    try:
        return model_view(img, s, read)
    except ValueError as e:
        raise InputError(str(e)) from None


def _check_read(read: str) -> None:
    try:
        check_read(read)
    except ValueError as e:
        raise InputError(str(e)) from None


def prepare(path: str | Path, s: RenderSettings, channels: tuple[str, ...] = ("ink",),
            read: str = READS[0]) -> np.ndarray:
    """The model's view of one input file, as a ``uint8`` image (a ``(channels, h, w)`` stack for
    a model that reads more than ink)."""
    path = Path(path)
    if not path.is_file():
        what = ("a folder, not an image or stroke file" if path.is_dir() else
                "not a regular file (a device, pipe or socket); give an image or stroke file" if path.exists() else
                "a link that leads nowhere" if path.is_symlink() else "no such file")
        raise InputError(f"{path}: {what}")
    try:
        size = path.stat().st_size
        if size > MAX_DECODED_BYTES:
            raise InputError(f"{path}: a file of {size / 1e6:,.0f} MB, more than homus reads as one symbol "
                             f"({MAX_DECODED_BYTES // 1_000_000:,} MB); crop the symbol or scale the image down")
        data = path.read_bytes()
    except OSError as e:
        raise user_os_error(e) or e from None
    head = _header(data)
    if head is None:  # read by content: the name may be wrong
        strokes = _strokes_of(data, path, named=path.suffix.lower() == ".txt")
        if strokes is not None:
            return render_plain(strokes, s, channels)
    if channels != ("ink",):
        raise InputError(f"{path}: this model reads {','.join(channels)}: the pen's order or the symbol's size on "
                         "the tablet, which an image does not hold; give it HOMUS .txt stroke files")
    img = decode_image(data, path, head)
    try:
        return normalize_image(img, s, read)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _strokes_of(data: bytes, path: Path, named: bool) -> tuple[np.ndarray, ...] | None:
    """The strokes of a stroke file, bounded as the web service bounds a drawing: a file with more
    than one symbol's worth is refused before or after parsing, not drawn for minutes. A file not
    ``named`` ``.txt`` is a stroke file only if it parses as one within the bounds: None otherwise."""
    if len(data) > MAX_STROKE_FILE_BYTES:
        if not named:
            return None
        raise InputError(f"{path}: a stroke file of {len(data):,} bytes, more than one drawn symbol takes "
                         f"({MAX_STROKE_FILE_BYTES:,} at most)")
    try:
        strokes = parse_bytes(data, path, labelled=False).strokes  # its class is what we seek
    except StrokeFileError:
        if not named:
            return None
        raise
    points = sum(len(st) for st in strokes)
    if len(strokes) > MAX_STROKES or points > MAX_POINTS:
        raise InputError(f"{path}: {len(strokes):,} strokes of {points:,} points, more than one drawn symbol has "
                         f"({MAX_STROKES} strokes and {MAX_POINTS:,} points at most)")
    return strokes


def image_read(read: str, ckpt: dict) -> str:
    """``read`` for a model: ``auto`` keeps other tools' ink (fitted or thickened) only for a model
    that was trained on their images (``--stroke-redraw``), and redraws every image for one that
    never saw them."""
    _check_read(read)
    foreign = ((ckpt.get("config") or {}).get("strokes") or {}).get("redraw", 0)
    return "redraw" if read == "auto" and not foreign else read


def predict(run: str | Path, inputs: list[str | Path], top_k: int = 3, read: str = READS[0]) -> list[dict]:
    """Top-k labels with probabilities per input; a bad input gets ``{"error": ...}``, the rest answer."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a whole number >= 1, got {top_k!r}")
    model, ckpt = RunFolder(run).load_model()
    read = image_read(read, ckpt)
    s = RenderSettings.from_dict(ckpt["render"])
    classes, channels = ckpt["classes"], checkpoint.channels(ckpt)
    results, ready = [], []
    for p in inputs:
        try:
            ready.append((len(results), prepare(p, s, channels, read)))
            results.append({"input": str(p)})
        except (InputError, StrokeFileError, OSError) as e:  # this input alone fails; the others answer
            results.append({"input": str(p), "error": describe(e) or str(e)})
    if ready:
        probs = torch.from_numpy(class_probabilities(model, np.stack([img for _, img in ready])))
        k = min(top_k, len(classes))
        top = probs.topk(k, dim=1)
        for (i, _), values, idx in zip(ready, top.values.tolist(), top.indices.tolist(), strict=True):
            results[i]["top"] = [{"label": classes[j], "probability": round(v, 6)}
                                 for v, j in zip(values, idx, strict=True)]
    return results
