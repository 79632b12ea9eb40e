"""Screenshots, taken with headless Chromium, of what a user sees: a report and the MLflow UI.

    python scripts/screenshots.py report reports/sgu_split          # -> reports/sgu_split/screenshot.png
    python scripts/screenshots.py report reports/sgu_split --out /tmp/s.png --height 4000
    python scripts/screenshots.py mlflow-ui sgu_split --out docs/mlflow_ui.png
        [--tracking-uri sqlite:///mlflow.db]   # starts `mlflow server` on 127.0.0.1, opens the
                                               # experiment, expands its latest parent run

The README's two screenshots (docs/) were taken with

    python -m gmlp_ablate.run sweeps/sgu_split.yaml
    python scripts/screenshots.py mlflow-ui sgu_split --out docs/mlflow_ui.png --height 620
    python -m analysis.report sgu_split
    python scripts/screenshots.py report reports/sgu_split --out docs/report.png --height 2200

Needs ``chromium`` (Debian: ``apt-get install -y chromium``) and Playwright's Python package
(the ``dev`` extra: ``pip install -e '.[dev]'``). Playwright drives the system Chromium, so
no browser is downloaded (never run ``playwright install`` for this). Chromium runs with a
fresh profile and no network features; the MLflow server it talks to listens on 127.0.0.1
only. Exits 2 with one line when Chromium, Playwright, the report or the experiment is
missing, or when the page does not show what it should.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, List, Optional, Tuple

from gmlp_ablate.names import METRIC_PARAMS, PARAM_SEED, PARENT, TAG_FACTORS, TAG_METRIC, TAG_PARENT_RUN, TAG_ROLE

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")
"""Default columns of the MLflow runs table that stay empty for sweep runs."""


class ScreenshotError(RuntimeError):
    """Something a screenshot needs is missing or did not come up."""


def _chromium() -> str:
    """The system Chromium's executable."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise ScreenshotError("chromium is not installed (apt-get install -y chromium)")
    return exe


class _Browser:
    """Headless system Chromium driven by Playwright; one page of ``width`` x ``height`` CSS pixels.

    Playwright's errors (a timeout, a crashed browser) come out as ScreenshotError."""

    def __init__(self, width: int, height: int):
        self.exe, self.width, self.height = _chromium(), width, height
        try:
            from playwright.sync_api import Error, sync_playwright
        except ImportError:
            raise ScreenshotError("playwright is not installed (pip install -e '.[dev]')") from None
        self._error, self._start = Error, sync_playwright

    def __enter__(self) -> Any:
        self._pw = self._start().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=self.exe, headless=True, args=list(CHROMIUM_FLAGS))
            return self._browser.new_page(viewport={"width": self.width, "height": self.height}, device_scale_factor=1)
        except self._error as e:
            self._pw.stop()
            raise ScreenshotError(f"chromium ({self.exe}) did not start: {_first_line(e)}") from None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        try:
            self._browser.close()
        finally:
            self._pw.stop()
        if exc is not None and isinstance(exc, self._error):
            raise ScreenshotError(_first_line(exc)) from None
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 2000, timeout: float = 120.0) -> Path:
    """Render the static page ``html`` at ``width`` x ``height`` CSS pixels into the PNG ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _Browser(width, height) as page:
        page.goto(html.resolve().as_uri(), wait_until="load", timeout=timeout * 1000)
        page.screenshot(path=str(out), timeout=timeout * 1000)
    if not out.is_file():
        raise ScreenshotError(f"chromium wrote no screenshot for {html}")
    return out


# --------------------------------------------------------------------------------------
# The MLflow UI: a single-page app behind a real `mlflow server`
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ScreenshotError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    raise ScreenshotError(f"{url} did not answer within {timeout:.0f} s")


def _exactly(text: str) -> "re.Pattern[str]":
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def _run_link(page: Any, run_name: str) -> Any:
    """The link, in the runs table, to the run named ``run_name``."""
    return page.locator("a").filter(has_text=_exactly(run_name)).first


def _wait_shown(page: Any, run_name: str, what: str, timeout: float) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        _run_link(page, run_name).wait_for(state="visible", timeout=timeout * 1000)
    except PlaywrightTimeout:
        raise ScreenshotError(f"the MLflow UI did not show {what} within {timeout:.0f} s") from None


def _tidy(page: Any) -> None:
    """The runs page of a training experiment without the side panels a first visit opens:
    pick the "Model training" view and close the assistant panel, where they are shown."""
    training = page.locator("button, [role=button]").filter(has_text=_exactly("Model training"))
    if training.count():
        training.first.click()
    new_chat = page.locator('button[aria-label="New Chat"]')
    if new_chat.count():
        # the innermost element holding both the panel's "New Chat" and its "Close" button
        panel = page.locator("div").filter(has=new_chat).filter(has=page.locator('button[aria-label="Close"]')).last
        if panel.count():
            panel.locator('button[aria-label="Close"]').first.click()


# In the "Columns" selector, a tree of group headers ("Metrics (10)", "Parameters (49)",
# "Tags (37)") each followed by its items: tick the wanted [group, item] pairs and untick the
# hidden items. Returns what it toggled.
_TOGGLE_COLUMNS_JS = """
([wanted, hidden]) => {
  const nodes = [...document.querySelectorAll('.du-bois-light-tree-treenode')];
  const label = n => n.textContent.trim();
  const toggle = n => { const c = n.querySelector('.du-bois-light-tree-checkbox'); if (c) c.click(); return !!c; };
  const done = [];
  for (const [group, name] of wanted) {
    const start = nodes.findIndex(n => label(n).startsWith(group + ' ('));
    const node = start >= 0 ? nodes.slice(start + 1).find(n => label(n) === name) : undefined;
    if (node && toggle(node)) done.push(name);
  }
  for (const name of hidden) {
    const node = nodes.find(n => label(n) === name);
    if (node && toggle(node)) done.push('-' + name);
  }
  return done;
}
"""


def _show_columns(page: Any, columns: List[List[str]], timeout: float) -> None:
    """Show ``columns`` ([group, name] pairs) and hide the empty default ones."""
    button = page.locator("button").filter(has_text=_exactly("Columns"))
    if not button.count():
        return
    button.first.click()
    tree = page.locator(".du-bois-light-tree-treenode")
    tree.first.wait_for(state="attached", timeout=timeout * 1000)  # its first node is a hidden measuring one
    page.evaluate(_TOGGLE_COLUMNS_JS, [columns, list(HIDDEN_COLUMNS)])
    page.keyboard.press("Escape")  # close the selector
    tree.first.wait_for(state="detached", timeout=timeout * 1000)


def _expand(page: Any, parent_name: str) -> None:
    """Click the expander of the parent run's row: the first button of the row holding its link.
    A DOM click, not the mouse, so the screenshot shows no hover or focus on that row."""
    link = _run_link(page, parent_name)
    row = page.locator("[role=row]").filter(has=link)
    if row.count():
        row.first.locator("button").first.dispatch_event("click")
    else:  # no ARIA rows: the nearest ancestor of the link that holds a button
        link.evaluate("a => { let r = a; while (r && !r.querySelector('button')) r = r.parentElement;"
                      " if (r) r.querySelector('button').click(); }")


def _shoot_ui(url: str, parent_name: str, child_name: str, columns: List[List[str]], out: Path,
              width: int, height: int, timeout: float) -> None:
    with _Browser(width, height) as page:
        page.goto(url, timeout=timeout * 1000)
        _wait_shown(page, parent_name, f"the parent run {parent_name!r}", timeout)
        _tidy(page)  # may re-render the page: wait for the run again
        _wait_shown(page, parent_name, f"the parent run {parent_name!r}", timeout)
        if columns:
            _show_columns(page, columns, timeout)
        if child_name:
            if not _run_link(page, child_name).is_visible():
                _expand(page, parent_name)
            _wait_shown(page, child_name, f"the nested trial run {child_name!r} after expanding the parent", timeout)
        page.mouse.move(0, 0)  # no hover effect from an earlier click
        page.wait_for_timeout(1500)  # let the table finish laying out
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), timeout=timeout * 1000)


def _runs_to_show(tracking_uri: str, experiment: str) -> Tuple[str, str, str, List[List[str]]]:
    """(experiment id, latest parent run name, name of one of its trial runs, columns to
    show: the sweep's metric, parameter count, factors and seed)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ScreenshotError(f"no experiment '{experiment}' in {tracking_uri}")
    parents = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = '{PARENT}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ScreenshotError(f"experiment '{experiment}' has no sweep parent run in {tracking_uri}")
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{TAG_PARENT_RUN}` = '{parent.info.run_id}'",
                                  max_results=1)
    tags = parent.data.tags
    try:
        factors = [str(f) for f in json.loads(tags.get(TAG_FACTORS, "[]"))]
    except ValueError:
        factors = []
    columns = ([["Metrics", tags[TAG_METRIC]]] if tags.get(TAG_METRIC) else []) + [["Metrics", METRIC_PARAMS]]
    columns += [["Parameters", f] for f in factors] + [["Parameters", PARAM_SEED]]
    return exp.experiment_id, parent.info.run_name, (children[0].info.run_name if children else ""), columns


def mlflow_ui_screenshot(experiment: str, out: Path, tracking_uri: str, width: int = 1600, height: int = 1000,
                         timeout: float = 90.0) -> Path:
    """Start ``mlflow server`` on 127.0.0.1 for ``tracking_uri``, open the experiment's runs
    page in headless Chromium, expand its latest parent run and save the page as a PNG."""
    _chromium()  # before starting a server for nothing
    exp_id, parent_name, child_name, columns = _runs_to_show(tracking_uri, experiment)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", timeout, server)
        url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs"
        _shoot_ui(url, parent_name, child_name, columns, out, width, height, timeout)
    finally:
        try:
            os.killpg(server.pid, 15)
        except ProcessLookupError:
            pass
        server.wait(timeout=30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("report", help="a report's report.html")
    r.add_argument("report", help="a report folder (with report.html) or the HTML file itself")
    r.add_argument("--out", default=None, help="PNG to write (default: screenshot.png next to the report)")
    r.add_argument("--width", type=int, default=1280)
    r.add_argument("--height", type=int, default=2000)
    u = sub.add_parser("mlflow-ui", help="the MLflow UI's runs page of a sweep, its latest parent run expanded")
    u.add_argument("experiment", help="the sweep name (MLflow experiment)")
    u.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}",
                   help="MLflow store (default: sqlite:///mlflow.db in the working directory)")
    u.add_argument("--out", default="mlflow_ui.png", help="PNG to write (default: mlflow_ui.png)")
    u.add_argument("--width", type=int, default=1600)
    u.add_argument("--height", type=int, default=1000)
    args = p.parse_args()
    try:
        if args.what == "report":
            html = Path(args.report)
            html = html / "report.html" if html.is_dir() else html
            if not html.is_file():
                raise ScreenshotError(f"{html} does not exist")
            out = Path(args.out) if args.out else html.parent / "screenshot.png"
            print(screenshot(html, out, args.width, args.height))
        else:
            if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[len("sqlite:///"):]).is_file():
                raise ScreenshotError(f"no MLflow store at {args.tracking_uri}")
            print(mlflow_ui_screenshot(args.experiment, Path(args.out), args.tracking_uri, args.width, args.height))
    except (ScreenshotError, subprocess.TimeoutExpired) as e:
        print(f"screenshots: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
