"""Classify new inputs with a run's model: images of any size, or raw HOMUS stroke files.

Images are framed the way the renderer frames a symbol: polarity detected, ink found, fitted to
the run's canvas and margin, centred. Stroke files are rendered with the run's own settings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from homus_render.channels import render_plain
from homus_render.errors import HomusError, describe, user_os_error
from homus_render.normalize import READS, check_read, model_view
from homus_render.render import RenderSettings
from homus_render.strokes import StrokeFileError, parse_file

from . import checkpoint
from .inference import class_probabilities
from .runfolder import RunFolder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: The most pixels an input image may have: a phone's photo of a symbol fits, while a small file
#: that claims a huge canvas (a decompression bomb) is refused before it is decoded.
MAX_PIXELS = 100_000_000
#: How image files begin, to tell a damaged image from a file that is no image at all.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))
_HUGE = (-1, -1)  # the size of an image Pillow itself refuses to open as a decompression bomb


class InputError(HomusError, ValueError):
    """An input that is neither a readable image nor a stroke file."""


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    """The eight rotations and mirror images of ``img`` (height and width axes)."""
    return [np.rot90(m, k, axes=(0, 1)) for m in (img, img[:, ::-1]) for k in range(4)]


def decode_image(data: bytes, path: str | Path = "image") -> np.ndarray:
    """An image file's pixels as stored, alpha channel and depth kept, turned upright as its EXIF
    orientation says (OpenCV applies the orientation only when it drops the alpha channel, so the
    turn is found by comparing the two decodings). InputError for an empty, unknown, damaged or
    too large file; the size is read from the header before any pixel is decoded."""
    if not data:
        raise InputError(f"{path}: an empty file (0 bytes), not an image")
    kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if kind == "WebP" and data[8:12] != b"WEBP":  # RIFF also begins WAV and AVI files
        kind = None
    size = _claimed_size(data, kind)
    if size is None:  # only what a header vouches for is decoded
        raise InputError(f"{path}: a damaged or truncated {kind} file" if kind else
                         f"{path}: neither an image (PNG, JPEG, BMP, TIFF, WebP, GIF) nor a HOMUS .txt stroke file")
    if size == _HUGE or size[0] * size[1] > MAX_PIXELS:
        claim = "more pixels than Pillow opens" if size == _HUGE else f"{size[0]:,} x {size[1]:,} pixels"
        raise InputError(f"{path}: the image claims {claim}, more than homus reads ({MAX_PIXELS:,}); crop the "
                         "symbol or scale the image down")
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
        raise InputError(f"{path}: a damaged or truncated {kind or 'image'} file")
    if upright is not None and stored is not None and not np.array_equal(upright, stored):
        for turn, candidate in zip(_dihedral(img), _dihedral(stored), strict=True):
            if candidate.shape == upright.shape and np.array_equal(candidate, upright):
                return np.ascontiguousarray(turn)
    return img


def _claimed_size(data: bytes, kind: str | None) -> tuple[int, int] | None:
    """(width, height) that an image file's header claims, read without decoding the pixels: a
    PNG's from its IHDR chunk (which must come first, whatever the checksums of later chunks say),
    any other format's by Pillow. None when no header vouches for a size."""
    import io
    import struct
    import warnings

    from PIL import Image

    if kind == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the size is checked by the caller
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:  # beyond Pillow's own limit, which is above ours
        return _HUGE
    except Exception:  # truncated, damaged, or not an image Pillow knows
        return None


def _to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 grayscale of any decoded image. Transparency counts: ink carried only by the alpha
    channel (opaque strokes of one colour on a transparent sheet) is laid on paper of the opposite
    brightness, so it shows."""
    if img.dtype == np.uint16:  # to 0-255 by its own top: a 12-bit scan in a 16-bit file tops out at 4095
        top = int(img.max())
        img = img.astype(np.uint8) if top <= 255 else (img.astype(np.float32) * (255 / top)).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        if not np.isfinite(img).all():
            raise InputError("the image holds pixels that are not numbers (NaN or infinity)")
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
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
    ink = float((gray * a).sum() / max(a.sum(), 1e-6))  # the brightness of what is opaque
    paper = 255.0 if ink < 128 else 0.0
    return np.clip(gray * a + paper * (1 - a), 0, 255).round().astype(np.uint8)


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
    if img.max() - img.min() < 16:
        raise InputError("no ink found: the image is blank")
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
    if path.suffix.lower() == ".txt":
        return render_plain(parse_file(path, labelled=False).strokes, s, channels)  # its class is what we seek
    if channels != ("ink",):
        raise InputError(f"{path}: this model reads {','.join(channels)}: the pen's order or the symbol's size on "
                         "the tablet, which an image does not hold; give it HOMUS .txt stroke files")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise user_os_error(e) or e from None
    img = decode_image(data, path)
    try:
        return normalize_image(img, s, read)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


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
