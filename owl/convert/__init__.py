"""Weight conversion between owl and other layouts (the reference mPLUG-Owl checkpoints)."""
