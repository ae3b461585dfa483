"""Two simulated raters over the six published OwlEval answer sets, written to ratings.jsonl.

For showing `owl eval report` (the README figure); these are NOT human ratings:
    python docs/synthetic_ratings.py ../shared/owleval && owl eval report ratings.jsonl --out runs/owleval-report
"""

import json
import random
import sys
from pathlib import Path

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/owleval")
bias = {
    "mPLUG_Owl_7b": 0.2,
    "minigpt4_13b": 0.3,
    "llava_13b": 0.6,
    "blip2_13b": 1.2,
    "MMreact": 0.9,
    "openflanmingo": 1.6,
}
rng = random.Random(0)
with open("ratings.jsonl", "w") as f:
    for path in sorted((data / "answers").glob("*.jsonl")):
        stem = path.stem.replace("_answer", "")
        for line in path.read_text().splitlines():
            r = json.loads(line)
            truth = min(3, max(0, round(rng.gauss(bias[stem], 0.8))))
            for rater in ("ann", "bob"):
                g = min(3, max(0, truth + rng.choice([0, 0, 0, 1, -1])))
                f.write(
                    json.dumps(
                        {
                            "rater": rater,
                            "question_id": r["question_id"],
                            "image": r["image"],
                            "system": r["model_id"],
                            "rating": "ABCD"[g],
                            "time": 0,
                        }
                    )
                    + "\n"
                )
