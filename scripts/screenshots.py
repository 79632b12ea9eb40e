"""Screenshot a report's ``report.html`` with headless Chromium (to check how it renders).

    python scripts/screenshots.py reports/sgu_split                 # -> reports/sgu_split/screenshot.png
    python scripts/screenshots.py reports/sgu_split --out /tmp/s.png --width 1280 --height 4000

Needs ``chromium`` (Debian: ``apt-get install -y chromium``). Runs it with a fresh profile
and no network features; exits 2 with one line when Chromium or the report is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars")


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 2000, timeout: float = 120.0) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS pixels into the PNG ``out``."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot for {html}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a report folder (with report.html) or the HTML file itself")
    p.add_argument("--out", default=None, help="PNG to write (default: screenshot.png next to the report)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args()
    html = Path(args.report)
    html = html / "report.html" if html.is_dir() else html
    if not html.is_file():
        print(f"screenshots: error: {html} does not exist", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else html.parent / "screenshot.png"
    try:
        print(screenshot(html, out, args.width, args.height))
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"screenshots: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
