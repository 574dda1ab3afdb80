"""Render an HTML report in headless Chromium (no extra downloads: Debian's `chromium` package) and check its plots.

Two runs of the same page at the same window size: `--dump-dom` (the DOM after the page's load handlers ran: the
report's render check writes how many `img.plot` decoded, naturalWidth > 0, and where each one is) and
`--screenshot` (a PNG of the window). A plot renders when the browser decoded it and the screenshot, cropped to
its rectangle, is not blank: at least `min_ink` of its pixels differ from white.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

WINDOW = (1200, 2400)


def find_chromium() -> str | None:
    """The chromium binary on PATH (`.ci/run` installs Debian's package), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(binary: str, html: Path, extra: list[str], profile: Path, timeout_s: float) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *extra, html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def render(html: Path, work: Path | None = None, timeout_s: float = 120.0) -> dict:
    """{"images", "decoded", "rects" (x, y, w, h per plot), "ink" (non-white fraction per plot), "screenshot"}."""
    import numpy as np
    from PIL import Image

    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH")
    work = Path(work or tempfile.mkdtemp(prefix="report-browser-"))
    work.mkdir(parents=True, exist_ok=True)
    dom = _run(binary, html, ["--dump-dom", "--virtual-time-budget=3000"], work / "profile-dom", timeout_s)
    match = re.search(r'<p id="render-check"([^>]*)>([^<]*)</p>', dom.stdout)
    if dom.returncode != 0 or match is None:
        raise RuntimeError(f"chromium --dump-dom failed (exit {dom.returncode}): {dom.stderr[-800:]}")
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
    rects = json.loads(attrs.get("rects", "[]").replace("&quot;", '"') or "[]")
    shot = work / "report.png"
    result = _run(binary, html, [f"--screenshot={shot}", "--virtual-time-budget=3000"], work / "profile-shot",
                  timeout_s)
    if result.returncode != 0 or not shot.exists():
        raise RuntimeError(f"chromium --screenshot failed (exit {result.returncode}): {result.stderr[-800:]}")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    ink = []
    for x, y, w, h in rects:
        crop = pixels[max(0, y):y + h, max(0, x):x + w]
        ink.append(float((np.abs(crop - 255).sum(axis=2) > 30).mean()) if crop.size else 0.0)
    return {"images": int(attrs.get("images") or 0), "decoded": int(attrs.get("decoded") or 0), "rects": rects,
            "ink": ink, "text": match.group(2), "screenshot": shot, "size": pixels.shape[1::-1]}
