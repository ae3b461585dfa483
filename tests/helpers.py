"""Small helpers shared by tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A deterministic noise image of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd=None):
    """Run the installed ``owl`` command (the real entry point) and return the CompletedProcess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "owl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "owl.cli"]
    root = str(Path(__file__).resolve().parents[1])
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": root} | (env or {})
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )


def png_claiming(w: int, h: int, depth: int = 8) -> bytes:
    """A PNG whose header claims w x h pixels over one tiny compressed row: what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def chat_user(*parts: object) -> dict:
    """A chat-completions body with one user message made of ``parts`` (any values: the fuzz tests send bad ones)."""
    return {"messages": [{"role": "user", "content": list(parts)}]}


def text_part(t: object) -> dict:
    return {"type": "text", "text": t}


def image_part(url: object) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}
