"""The 32 HOMUS symbol classes, spelled as in the dataset's files (v1 and v2 alike)."""

LABELS: tuple[str, ...] = (
    "12-8-Time", "2-2-Time", "2-4-Time", "3-4-Time", "3-8-Time", "4-4-Time", "6-8-Time",
    "9-8-Time", "Barline", "C-Clef", "Common-Time", "Cut-Time", "Dot", "Double-Sharp",
    "Eighth-Note", "Eighth-Rest", "F-Clef", "Flat", "G-Clef", "Half-Note", "Natural",
    "Quarter-Note", "Quarter-Rest", "Sharp", "Sixteenth-Note", "Sixteenth-Rest",
    "Sixty-Four-Note", "Sixty-Four-Rest", "Thirty-Two-Note", "Thirty-Two-Rest",
    "Whole-Half-Rest", "Whole-Note",
)
LABEL_SET = frozenset(LABELS)
