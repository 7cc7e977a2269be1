"""Draw docs/channels/channels.png: one sample of writer 7 per row, as ink | time | stroke | size.

    python docs/channels/channels.py      # needs raw/ (homus fetch)
"""

import cv2

from homus_render.channels import render_channels
from homus_render.dataset import load_samples
from homus_render.preview import grid
from homus_render.render import RenderSettings

settings = RenderSettings(thickness=3, width=64, height=64)
samples = load_samples("raw", {"7"})
rows = []
for label in ["G-Clef", "Sharp", "Eighth-Note", "Quarter-Rest", "Whole-Half-Rest", "Dot"]:
    sample = next(x for x in samples if x.label == label)
    rows.append((label, list(render_channels(sample.strokes, settings, ("ink", "time", "stroke", "size")))))
cv2.imwrite("docs/channels/channels.png", grid(rows, cell=66, label_width=130))
