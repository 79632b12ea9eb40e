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

Needs ``chromium`` (Debian: ``apt-get install -y chromium``). Chromium runs with a fresh
profile and no network features; the MLflow server it talks to listens on 127.0.0.1 only.
Exits 2 with one line when Chromium, the report or the experiment is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars")


class ScreenshotError(RuntimeError):
    """Something a screenshot needs is missing or did not come up."""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise ScreenshotError("chromium is not installed (apt-get install -y chromium)")
    return exe


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 2000, timeout: float = 120.0) -> Path:
    """Render the static page ``html`` at ``width`` x ``height`` CSS pixels into the PNG ``out``."""
    exe = _chromium()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if not out.is_file():
        raise ScreenshotError(f"chromium wrote no screenshot for {html}")
    return out


# --------------------------------------------------------------------------------------
# The MLflow UI: a single-page app, so it is driven over the DevTools protocol.
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


class _CDP:
    """A minimal DevTools-protocol client over one page's websocket (aiohttp, an MLflow dependency)."""

    def __init__(self, ws: Any):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self.n += 1
        await self.ws.send_str(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise ScreenshotError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    async def js(self, expr: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    async def wait_js(self, expr: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expr)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise ScreenshotError(f"the MLflow UI did not show {what} within {timeout:.0f} s")


# Expand the row of a run named `name` in the runs table: its expander is the first button of
# the row that holds the run's name link.
_EXPAND_JS = """
(() => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === %s);
  if (!link) return false;
  let row = link;
  for (let i = 0; i < 12 && row && !row.querySelector('button'); i++) row = row.parentElement;
  const button = row && row.querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})()
"""


# The runs page of a training experiment without the side panels a first visit opens: pick
# the "Model training" view and close the assistant panel, where they are shown.
_TIDY_JS = """
(() => {
  const done = [];
  const training = [...document.querySelectorAll('[role=button], button')]
    .find(b => b.textContent.trim() === 'Model training');
  if (training) { training.click(); done.push('training'); }
  let panel = document.querySelector('button[aria-label="New Chat"]');
  for (let i = 0; i < 8 && panel; i++) {
    const close = panel.querySelector && panel.querySelector('button[aria-label="Close"]');
    if (close) { close.click(); done.push('assistant'); break; }
    panel = panel.parentElement;
  }
  return done.join(',');
})()
"""


# Show the given columns and hide the empty default ones through the "Columns" selector:
# a tree of group headers ("Metrics (10)", "Parameters (49)", "Tags (37)") and their items.
_COLUMNS_JS = """
(async (wanted, hidden) => {
  const button = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Columns');
  if (!button) return 'no Columns button';
  button.click();
  await new Promise(r => setTimeout(r, 1000));
  const nodes = [...document.querySelectorAll('.du-bois-light-tree-treenode')];
  const label = n => n.textContent.trim();
  const toggle = n => { const c = n.querySelector('.du-bois-light-tree-checkbox'); if (c) c.click(); return !!c; };
  const done = [];
  for (const [group, name] of wanted) {
    const start = nodes.findIndex(n => label(n).startsWith(group + ' ('));
    const node = nodes.slice(start + 1).find(n => label(n) === name);
    if (start >= 0 && node && toggle(node)) done.push(name);
  }
  for (const name of hidden) {
    const node = nodes.find(n => label(n) === name);
    if (node && toggle(node)) done.push('-' + name);
  }
  return done.join(',');
})
"""


async def _shoot_ui(debug_port: int, url: str, parent_name: str, child_name: str, columns: list, out: Path,
                    width: int, height: int, timeout: float) -> None:
    import aiohttp

    pages = json.loads(_wait_http(f"http://127.0.0.1:{debug_port}/json/list", timeout))
    page = next(p for p in pages if p.get("type") == "page")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _CDP(ws)
            await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                           mobile=False)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=url)
            def shown(run_name: str) -> str:  # JS: is a link with this run name on the page?
                return f"[...document.querySelectorAll('a')].some(a => a.textContent.trim() === {json.dumps(run_name)})"

            await cdp.wait_js(shown(parent_name), timeout, f"the parent run {parent_name!r}")
            await cdp.js(_TIDY_JS)  # may re-render the page: wait for the run again
            await cdp.wait_js(shown(parent_name), timeout, f"the parent run {parent_name!r}")
            if columns:
                await cdp.js(f"({_COLUMNS_JS})({json.dumps(columns)}, {json.dumps(['Dataset', 'Source', 'Models'])})")
                for kind in ("keyDown", "keyUp"):  # close the selector
                    await cdp.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape",
                                   windowsVirtualKeyCode=27)
                await cdp.wait_js("!document.querySelector('.du-bois-light-tree-treenode')", timeout,
                                  "the runs table after closing the column selector")
            if child_name:
                if not await cdp.js(shown(child_name)):
                    await cdp.js(_EXPAND_JS % json.dumps(parent_name))
                await cdp.wait_js(shown(child_name), timeout,
                                  f"the nested trial run {child_name!r} after expanding the parent")
            await asyncio.sleep(1.5)  # let the table finish laying out
            shot = await cdp.call("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def _runs_to_show(tracking_uri: str, experiment: str) -> tuple:
    """(experiment id, latest parent run name, name of one of its trial runs, columns to
    show: the sweep's metric, parameter count, factors and seed)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ScreenshotError(f"no experiment '{experiment}' in {tracking_uri}")
    parents = client.search_runs([exp.experiment_id], "tags.`gmlp_ablate.role` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ScreenshotError(f"experiment '{experiment}' has no sweep parent run in {tracking_uri}")
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=1)
    tags = parent.data.tags
    try:
        factors = [str(f) for f in json.loads(tags.get("factors", "[]"))]
    except ValueError:
        factors = []
    columns = ([["Metrics", tags["metric"]]] if tags.get("metric") else []) + [["Metrics", "model/params"]]
    columns += [["Parameters", f] for f in factors] + [["Parameters", "seed"]]
    return exp.experiment_id, parent.info.run_name, (children[0].info.run_name if children else ""), columns


def mlflow_ui_screenshot(experiment: str, out: Path, tracking_uri: str, width: int = 1600, height: int = 1000,
                         timeout: float = 90.0) -> Path:
    """Start ``mlflow server`` on 127.0.0.1 for ``tracking_uri``, open the experiment's runs
    page in headless Chromium, expand its latest parent run and save the page as a PNG."""
    exe = _chromium()
    exp_id, parent_name, child_name, columns = _runs_to_show(tracking_uri, experiment)
    port, debug_port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", timeout, server)
        with tempfile.TemporaryDirectory() as profile:
            browser = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                        f"--remote-debugging-port={debug_port}", f"--window-size={width},{height}",
                                        "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs"
            asyncio.run(_shoot_ui(debug_port, url, parent_name, child_name, columns, out, width, height, timeout))
            browser.terminate()
            browser.wait(timeout=20)
    finally:
        if browser is not None and browser.poll() is None:
            browser.kill()
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
