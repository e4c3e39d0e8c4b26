"""Render a report in headless Chromium: a screenshot and the page's own health check.

Each report records, once loaded, how many of its images failed to decode and
how many script errors happened (attributes of ``<html>``, see
:mod:`bids_pcs.reports.html`). :func:`check_page` loads a page the way a
reader's browser would, dumps the DOM to read those attributes back, and takes
a screenshot for a human to look at. Used by the tests and by CI (Debian
package ``chromium``); not needed to run the app.

Usage::

    result = check_page(Path("/out/sub-01.html"), screenshot=Path("/tmp/sub-01.png"))
    assert result.ok, result.problems
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
# no network, no first-run UI, no background services: the page alone
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--mute-audio")
_ATTRIBUTE = re.compile(r'\sdata-([a-z-]+)="([^"]*)"')


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw on one page."""

    page: Path
    attributes: dict[str, str] = field(default_factory=dict)
    screenshot: Path | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or ``None``."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_page(page: Path, *, screenshot: Path | None = None, width: int = 1280,
               height: int = 2400, timeout_s: float = 60.0,
               browser: str | None = None) -> PageCheck:
    """Load ``page`` in headless Chromium; report broken images and script errors.

    Args:
        page: the HTML file.
        screenshot: where to save a PNG of the first ``width`` x ``height`` pixels.
        browser: browser executable (default: :func:`find_browser`).

    Raises:
        FileNotFoundError: when no browser is installed.
    """
    page = Path(page).absolute()
    exe = browser or find_browser()
    if exe is None:
        raise FileNotFoundError("no Chromium found; install the Debian package 'chromium'")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bids_pcs-chromium-") as profile:
        flags = [*_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                             text=True, timeout=timeout_s, check=False)
        if screenshot is not None:
            screenshot = Path(screenshot).absolute()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run([exe, *flags, f"--screenshot={screenshot}", page.as_uri()],
                                  capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
            if not screenshot.is_file():
                problems.append(f"no screenshot written (exit {shot.returncode}): "
                                f"{_tail(shot.stderr)}")
    html_tag = re.search(r"<html[^>]*>", dom.stdout)
    attributes = dict(_ATTRIBUTE.findall(html_tag.group(0))) if html_tag else {}
    if dom.returncode != 0 or not html_tag:
        problems.append(f"Chromium could not render the page (exit {dom.returncode}): "
                        f"{_tail(dom.stderr)}")
    elif attributes.get("page-check") != "ok":
        problems.append(f"page check did not pass: {attributes.get('page-check', 'not run')} "
                        f"({attributes.get('images-broken', '?')} of "
                        f"{attributes.get('images-total', '?')} images broken)")
    if attributes.get("script-errors", "0") != "0":
        problems.append(f"{attributes['script-errors']} script error(s) on the page")
    return PageCheck(page=page, attributes=attributes, screenshot=screenshot,
                     problems=tuple(problems))


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class BrowserError(RuntimeError):
    """Chromium did not answer as the DevTools protocol says it should."""


class DevToolsSession:
    """Headless Chromium driven over the DevTools protocol on a pipe (no network, no ports).

    Chromium's ``--remote-debugging-pipe`` reads JSON commands, each ended by a
    NUL byte, on its file descriptor 3 and answers on 4. A page is opened in
    one tab, clicked with real mouse events and typed into with real key
    input, so its own script runs as a reader's would; downloads land in
    ``download_dir``. Used by the report tests (the rating form's download).

    Example::

        with DevToolsSession(download_dir=tmp) as browser:
            browser.open(Path("/out/sub-01.html"))
            browser.click('input[name="decision-sub-01-L"][value="accept"]')
            browser.type_into("#rater", "AB")
            browser.click("#save-ratings-tsv")
            path = browser.wait_for_download()
    """

    def __init__(self, *, download_dir: Path, browser: str | None = None,
                 timeout_s: float = 60.0, width: int = 1280, height: int = 1600) -> None:
        self.download_dir = Path(download_dir).absolute()
        self.exe = browser or find_browser()
        if self.exe is None:
            raise FileNotFoundError("no Chromium found; install the Debian package 'chromium'")
        self.timeout_s = timeout_s
        self.size = (width, height)
        self._id = 0
        self._events: list[dict] = []
        self._buffer = b""
        self.session_id: str | None = None

    def __enter__(self) -> DevToolsSession:
        self._profile = tempfile.TemporaryDirectory(prefix="bids_pcs-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends above 4, so that placing one on fd 3 cannot overwrite the other
        to_browser_r, from_browser_w = (_fd_above(fd, 10) for fd in (to_browser_r,
                                                                      from_browser_w))
        flags = [*_FLAGS, f"--user-data-dir={self._profile.name}",
                 f"--window-size={self.size[0]},{self.size[1]}", "--remote-debugging-pipe",
                 "about:blank"]
        # bash puts the pipe ends on the protocol's fds 3 (commands) and 4 (answers); dash
        # (Debian's sh) cannot name descriptors above 9
        redirect = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self._process = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", redirect, self.exe, *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        self.send("Browser.setDownloadBehavior", behavior="allow",
                  downloadPath=str(self.download_dir), eventsEnabled=True)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session_id = self.send("Target.attachToTarget", targetId=target,
                                    flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, *, session: bool = False, **params: object) -> dict:
        """Run one command and return its result (events seen meanwhile are kept)."""
        self._id += 1
        message: dict[str, object] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session_id
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, predicate=None) -> dict:
        """The first event ``method`` (whose params satisfy ``predicate``), waiting for it."""
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method and (predicate is None
                                                       or predicate(event["params"])):
                    return self._events.pop(index)["params"]
            self._events.append(self._read())

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], self.timeout_s)
            if not ready:
                raise BrowserError(f"Chromium sent nothing for {self.timeout_s:.0f} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # ------------------------------------------------------------------ page
    def open(self, page: Path) -> None:
        """Load ``page`` and wait for its load event."""
        self.send("Page.navigate", session=True, url=Path(page).absolute().as_uri())
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script error: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def click(self, selector: str) -> None:
        """Scroll the element into view and click its centre with the mouse."""
        box = self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " if (!e) { return null; } e.scrollIntoView({block: 'center'});"
            " var r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y,
                      button="left" if kind != "mouseMoved" else "none", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        """Click an input and type ``text`` into it."""
        self.click(selector)
        self.send("Input.insertText", session=True, text=text)

    def select_option(self, selector: str, value: str) -> None:
        """Choose ``value`` in a ``<select>`` as the keyboard would (fires ``change``)."""
        self.click(selector)
        self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change',"
            " {bubbles: true})); e.blur(); })()")

    def wait_for_download(self) -> Path:
        """The path of the next download once Chromium has finished writing it."""
        begun = self.wait_event("Browser.downloadWillBegin")
        self.wait_event("Browser.downloadProgress",
                        lambda p: p.get("guid") == begun["guid"] and p["state"] == "completed")
        return self.download_dir / begun["suggestedFilename"]


def _fd_above(fd: int, lowest: int) -> int:
    """``fd`` moved to a descriptor number >= ``lowest`` (the old one closed)."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved
