"""Two-stage training: one loop (loop.py), configured per stage (config.py)."""
