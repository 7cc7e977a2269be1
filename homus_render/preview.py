"""Contact sheets: a few images of every class, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], cell: int = 64, label_width: int = 150,
         pad: int = 2) -> np.ndarray:
    """One row per ``(caption, images)``: the caption, then the images shrunk to fit ``cell``."""
    ncol = max((len(imgs) for _, imgs in rows), default=1)
    h, w = len(rows) * (cell + pad) + pad, label_width + ncol * (cell + pad) + pad
    sheet = np.full((h, w), 255, np.uint8)
    for r, (caption, imgs) in enumerate(rows):
        y = pad + r * (cell + pad)
        cv2.putText(sheet, caption, (4, y + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1,
                    cv2.LINE_AA)
        for c, img in enumerate(imgs):
            x = label_width + pad + c * (cell + pad)
            sheet[y:y + cell, x:x + cell] = fit_cell(img, cell)
    return sheet


def fit_cell(img: np.ndarray, cell: int) -> np.ndarray:
    """Shrink (never enlarge) ``img`` to fit a ``cell`` square with a thin grey frame."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = img.shape
    f = min(1.0, (cell - 2) / max(h, w))
    if f < 1:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    out = np.full((cell, cell), 255, np.uint8)
    y, x = (cell - img.shape[0]) // 2, (cell - img.shape[1]) // 2
    out[y:y + img.shape[0], x:x + img.shape[1]] = img
    cv2.rectangle(out, (0, 0), (cell - 1, cell - 1), 200, 1)
    return out
