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

import re
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
