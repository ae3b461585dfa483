"""The README's Python example runs as written (in a scratch directory) and prints the generated text."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    code = python_example()
    assert "load_model(" in code and "OwlProcessor.from_pretrained(" in code and ".text" in code
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "runs" / "example" / "config.json").exists()
    assert r.stdout.endswith("\n")  # the answer text was printed (a random model's answer may be blank)


def test_readme_serving_example_runs_after_the_first(tmp_path):
    """The second Python block (serve in-process, ask with the openai client) runs on the first block's model."""
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2 and "serve_in_thread" in blocks[1]
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for code in blocks[:2]:
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
        )
        assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\d+$", r.stdout.strip())  # completion_tokens printed after the text
