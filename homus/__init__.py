"""The ``homus`` command: a thin click layer over ``homus_render`` and ``classifier``."""
