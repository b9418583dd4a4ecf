"""Screenshots of the offline ``dvc plots show`` page and of the Airflow trigger form.

Uses headless Chromium (``apt-get install -y chromium``) driven over the DevTools protocol
(``websockets``, already a dependency). Writes ``$FL_HOME/screenshots/dvc_plots.png`` and
``$FL_HOME/screenshots/airflow_trigger_form.png``::

    .venv/bin/python tools/screenshots.py            # both
    .venv/bin/python tools/screenshots.py --only plots

The plots page needs a finished experiment (``plots/rounds.csv``: ``make experiment``). For
the form, the script starts its own Airflow api-server on a free loopback port, on the
project's embedded Airflow DB (``$FL_HOME/airflow``), with every user an admin (no login;
loopback only) and stops it afterwards. Chromium runs with networking features off
(``--disable-background-networking`` etc.), so the plots page proves it renders offline.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
logger = logging.getLogger("screenshots")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("Chromium not found: apt-get install -y chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f}s")


class Browser:
    """A headless Chromium page driven over the DevTools protocol."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        from websockets.sync.client import connect

        self._profile = tempfile.mkdtemp(prefix="fl-chromium-")
        self._proc = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.close()
                raise SystemExit("Chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self._connection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._ws = self._connection.__enter__()
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride",
                  width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        return out.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 60)

    def wait_for(self, condition: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({condition})"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for: {condition}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "_connection", None) is not None:
            self._connection.__exit__(None, None, None)
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


def plots_page(out_dir: Path, project: Path = ROOT) -> Path:
    """``dvc plots show`` of the project's last experiment, rendered and captured."""
    if not (project / "plots" / "rounds.csv").exists():
        raise SystemExit("no plots/rounds.csv yet: run `make experiment` first")
    html_dir = out_dir / "dvc_plots"
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "plots", "show", "-o", str(html_dir)], cwd=project, check=True,
                   stdout=subprocess.DEVNULL)
    page = (html_dir / "index.html").read_text()
    if "cdn.jsdelivr.net" in page:
        raise SystemExit("dvc plots show used the CDN page; check .dvc/config plots.html_template")
    browser = Browser(1280, 1000)
    try:
        browser.goto((html_dir / "index.html").as_uri())
        browser.wait_for("document.querySelectorAll('svg.marks, canvas.marks').length > 0", 30)
        time.sleep(1)
        return browser.screenshot(out_dir / "dvc_plots.png")
    finally:
        browser.close()


def airflow_form(out_dir: Path, dag_id: str = "federated_training") -> Path:
    """The trigger form of ``dag_id`` in a private api-server on the embedded Airflow DB."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from fl_airflow import env

    port = _free_port()
    os.environ.update(
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
    )
    env.configure()
    airflow = [sys.executable, "-m", "airflow"]
    for step in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([*airflow, *step], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    log = (out_dir / "api-server.log").open("wb")
    server = subprocess.Popen(
        [*airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", 180)
        browser = Browser(1280, 1100)
        browser.goto(f"http://127.0.0.1:{port}/dags/{dag_id}")
        click = (
            "(() => { const b = [...document.querySelectorAll('button')].find("
            "x => x.textContent.trim() === 'Trigger' || "
            "(x.getAttribute('aria-label') || '').startsWith('Trigger'));"
            " if (b) { b.click(); return true; } return false; })()"
        )
        browser.wait_for(click, 90)
        browser.wait_for("document.querySelector('[role=dialog]')", 30)
        time.sleep(2)
        return browser.screenshot(out_dir / "airflow_trigger_form.png")
    finally:
        if browser is not None:
            browser.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("plots", "airflow"))
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="the DVC project whose plots to show (default: this repo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    home = Path(os.environ.get("FL_HOME", ROOT / ".fl")).resolve()
    out_dir = home / "screenshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "plots"):
        logger.info("wrote %s", plots_page(out_dir, args.project.resolve()))
    if args.only in (None, "airflow"):
        logger.info("wrote %s", airflow_form(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
