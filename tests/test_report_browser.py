"""The run report in a real headless browser: it renders, logs no console error, every figure
loads. Chromium is driven over its DevTools pipe (no extra Python package); the tests skip
where no chromium is installed (Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: install chromium (apt-get install chromium)"
)

PAGE_STATE = """JSON.stringify({
  title: document.title,
  h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
                                                 width: i.naturalWidth})),
  tables: document.querySelectorAll('table').length,
  warnings: Array.from(document.querySelectorAll('.warn li')).map(li => li.textContent),
})"""


class Chromium:
    """Headless chromium over --remote-debugging-pipe: NUL-separated JSON on fds 3 (in) / 4."""

    def __init__(self, timeout: float = 60.0):
        self.timeout, self.next_id, self.events = timeout, 0, []
        self.profile = tempfile.mkdtemp(prefix="grokbasin-chromium-")
        to_chrome_r, self._send_fd = os.pipe()
        self._recv_fd, from_chrome_w = os.pipe()
        # the child's ends above fd 9 first, so moving them onto 3 and 4 cannot clobber either
        to_chrome_r, from_chrome_w = (_above(to_chrome_r), _above(from_chrome_w))
        args = [
            BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
        ]  # fmt: skip

        def onto_3_and_4() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            args,
            pass_fds=(3, 4),
            preexec_fn=onto_3_and_4,  # runs before the child closes the fds it does not keep
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply (events met meanwhile are kept)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._send_fd, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        reply = self._wait(lambda m: m.get("id") == want)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str) -> dict:
        """The first event named ``method`` (already received or next)."""
        for m in self.events:
            if m.get("method") == method:
                return m
        return self._wait(lambda m: m.get("method") == method)

    def _wait(self, match) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if "method" in m:
                    self.events.append(m)
                if match(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv_fd], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._recv_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def open(self, url: str) -> tuple[dict, list[str]]:
        """Load ``url``; the page's state (PAGE_STATE) and every console/log error."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired")
        state = self.send(
            "Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True}, session=session
        )["result"]["value"]
        return json.loads(state), errors_of(self.events)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._send_fd)
        os.close(self._recv_fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def _above(fd: int, low: int = 10) -> int:
    """A copy of ``fd`` numbered ``low`` or more (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return high


def errors_of(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors among DevTools events."""
    out = []
    for m in events:
        p = m.get("params", {})
        if m.get("method") == "Runtime.exceptionThrown":
            out.append(p.get("exceptionDetails", {}).get("text", "exception"))
        elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", "log error"))
    return out


@pytest.fixture(scope="module")
def browser():
    b = Chromium()
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real run (3 checkpoints, norms and MALA recorded) and its report."""
    from grokbasin.config import build_config
    from grokbasin.pipeline import run

    cfg = build_config(
        {},
        {
            "task.p": 7,
            "model.width": 8,
            "train.epochs": 20,
            "train.checkpoint_every": 10,
            "train.batch_size": 0,
            "llc.chains": 2,
            "llc.draws": 20,
            "llc.burnin": 5,
            "llc.record_norms": True,
            "llc.mala": True,
        },
    )
    return run(cfg, tmp_path_factory.mktemp("runs"), progress=False).run.report


def test_report_renders_without_errors_and_every_figure_loads(browser, report: Path):
    state, errors = browser.open(report.resolve().as_uri())
    assert errors == []
    assert state["title"].startswith("grokbasin run")
    assert "Sampler health" in state["h2"] and "Sampler dashboard" in state["h2"]
    assert state["tables"] >= 4
    alts = [i["alt"] for i in state["images"]]
    # trajectory, heat strip, trace grid and up to 3 checkpoint details
    assert len(alts) >= 4 and any(a.startswith("Health of all 3 checkpoints") for a in alts)
    assert any(a.startswith("Checkpoint") and "norms" in a for a in alts)
    assert "Chain traces at all 3 checkpoints" in alts
    assert all(i["complete"] and i["width"] > 0 for i in state["images"]), state["images"]


def test_browser_check_catches_a_broken_page(browser, tmp_path: Path):
    # the control: the same checks on a page with a console error and a broken image must fail
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body><h2>x</h2>"
        '<img alt="broken" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    state, errors = browser.open(bad.as_uri())
    assert any("boom" in e for e in errors)
    assert state["images"] == [{"alt": "broken", "complete": True, "width": 0}]
