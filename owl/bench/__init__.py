"""`owl bench`: measured figures (speed, MFU), never timed tests. Results go to JSON + markdown under runs/bench/."""
