"""Integer constants shared by the processor and the model (kept apart so neither imports the other)."""

IMAGE_PLACEHOLDER_ID = -200
"""Token id marking visual positions in ``input_ids``; never a real vocabulary id."""

IGNORE_INDEX = -100
"""Label value of positions that are not trained on (prompt, padding, visual positions)."""
