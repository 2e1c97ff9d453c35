"""Open a page in headless Chromium (Debian's package) and report what a reader would see.

Chromium speaks the DevTools protocol over two pipes with ``--remote-debugging-pipe``
(fd 3 in, fd 4 out, JSON messages ending in NUL): no WebDriver, no extra package.
``open_page`` loads a file, waits for its load event, and returns the console errors,
uncaught exceptions and failed loads it saw, and every image's state.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p and os.path.exists(p)), None)


@dataclass
class PageView:
    """What loading a page produced."""

    loaded: bool
    errors: list[str] = field(default_factory=list)     # console errors, exceptions
    images: list[dict[str, Any]] = field(default_factory=list)  # alt, complete, width


class _Cdp:
    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.proc, self.wfd, self.rfd = proc, to_browser, from_browser
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed its pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            try:
                self.events.append(self._read(deadline))
            except TimeoutError:
                return False
        return True


def open_page(path: Path, timeout: float = 60.0) -> PageView:
    """Load ``path`` in a fresh headless Chromium and read what it drew."""
    assert CHROMIUM is not None, "chromium is not installed (make setup installs it)"
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="wanmig-chromium-")
    # Chromium reads fd 3 and writes fd 4: a shell puts the pipes there, then execs it
    # (moved above 9 first, so that putting one there cannot close the other)
    high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_r, from_w))
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
    proc = subprocess.Popen(
        ["bash", "-c", f'exec 3<&{high_r} 4>&{high_w} {high_r}<&- {high_w}>&-; exec "$@"',
         "bash", *args], pass_fds=(high_r, high_w), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(high_r)
    os.close(high_w)
    os.close(to_r)
    os.close(from_w)
    cdp = _Cdp(proc, to_w, from_r)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget",
                           {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        loaded = cdp.wait_event("Page.loadEventFired", timeout)
        images = cdp.call("Runtime.evaluate", {
            "expression": "JSON.stringify([...document.images].map(i => ({alt: i.alt, "
                          "complete: i.complete, width: i.naturalWidth, "
                          "height: i.naturalHeight})))",
            "returnByValue": True}, session=session)["result"]["value"]
        view = PageView(loaded=loaded, images=json.loads(images))
        for e in cdp.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                view.errors.append(str([a.get("value") for a in p.get("args", [])]))
            elif e.get("method") == "Runtime.exceptionThrown":
                view.errors.append(str(p.get("exceptionDetails", {}).get("text")))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                view.errors.append(str(p["entry"].get("text")))
        try:
            cdp.call("Browser.close", timeout=10)
        except (EOFError, TimeoutError, RuntimeError):
            pass
        return view
    finally:
        os.close(to_w)
        os.close(from_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
