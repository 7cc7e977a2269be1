"""homus_render: HOMUS pen strokes to images. Pure geometry on numpy arrays; never imports torch."""

__version__ = "0.1.0"
