"""HTML building blocks shared by the subject and group reports.

Pages are assembled with :class:`string.Template` and small helpers that
escape every piece of text; :class:`Html` marks fragments that are already
markup. A page loads nothing from anywhere (no web fonts, no CDN, images
are data URIs) and says so with a Content-Security-Policy, so it opens the
same offline, in an archive or on a cluster's file browser.

A short inline script records whether every image decoded and whether any
script error happened, as attributes of ``<html>``
(``data-page-check="ok"``); the browser test reads them back with headless
Chromium (:mod:`bids_pcs.reports.browser`).

Usage::

    body = section("summary", "Summary", paragraph("Two images."))
    write_page(out / "x.html", title="x", heading="x", nav=[("summary", "Summary")], body=body)
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from string import Template

from bids_pcs import APP_NAME, CODE_URL, __version__
from bids_pcs.io.atomic import write_text


class Html(str):
    """A string that is already safe markup (inserted without escaping)."""


def esc(value: object) -> Html:
    """``value`` as escaped text (``Html`` values pass through unchanged)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[str]) -> Html:
    """Concatenate fragments, escaping plain strings."""
    return Html("".join(esc(p) for p in parts))


def section(anchor: str, title: str, content: str, *, level: int = 2,
            card: bool = True) -> Html:
    """A titled section with an anchor the navigation bar links to."""
    css = ' class="card"' if card else ""
    return Html(f'<section id="{esc(anchor)}"{css}><h{level}>{esc(title)}</h{level}>'
                f"{esc(content)}</section>")


def heading(title: str, level: int = 3) -> Html:
    return Html(f"<h{level}>{esc(title)}</h{level}>")


def paragraph(text: str, css: str | None = None) -> Html:
    cls = f' class="{esc(css)}"' if css else ""
    return Html(f"<p{cls}>{esc(text)}</p>")


def notice(text: str, kind: str = "muted") -> Html:
    """A highlighted note, e.g. "PCS inference not run"."""
    return Html(f'<div class="notice {esc(kind)}">{esc(text)}</div>')


def badge(text: str, kind: str = "muted") -> Html:
    """A small pill: ``ok`` (green), ``bad`` (red), ``info`` (blue), ``muted`` (grey)."""
    return Html(f'<span class="badge {esc(kind)}">{esc(text)}</span>')


def figure(uri: str, alt: str, caption: str = "", *, css: str = "") -> Html:
    """An embedded image with its caption."""
    cls = f' class="{esc(css)}"' if css else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Html(f'<figure{cls}><img src="{esc(uri)}" alt="{esc(alt)}">{cap}</figure>')


def link(href: str, text: str) -> Html:
    return Html(f'<a href="{esc(href)}">{esc(text)}</a>')


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *,
          numeric: Sequence[int] = (), css: str = "") -> Html:
    """A table; cells are escaped unless :class:`Html`, columns in ``numeric`` right-aligned."""
    cls = f' class="{esc(css)}"' if css else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return Html(f"<table{cls}><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")


def key_values(pairs: Iterable[tuple[str, object]]) -> Html:
    """A two-column list of labels and values."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return Html(f'<dl class="kv">{items}</dl>')


def plural(n: int, noun: str) -> str:
    """``noun`` or its plural for a count: ``plural(1, "session")`` -> ``"session"``."""
    return noun if n == 1 else f"{noun}s"


def count(n: int, noun: str) -> str:
    """``"1 participant"``, ``"0 sessions"``, ``"3 T1w images"``."""
    return f"{n} {plural(n, noun)}"


def stat_cards(stats: Iterable[tuple[str, object]]) -> Html:
    """Big numbers with a label, at the top of a page."""
    cards = "".join(f'<div class="stat"><div class="value">{esc(v)}</div>'
                    f'<div class="label">{esc(k)}</div></div>' for k, v in stats)
    return Html(f'<div class="stats">{cards}</div>')


def probability_bar(value: float | None) -> Html:
    """A probability as a bar and a number ("n/a" when unknown)."""
    if value is None:
        return Html("n/a")
    width = max(0.0, min(1.0, value)) * 100
    return Html(f'<span class="bar"><span style="width:{width:.1f}%"></span></span>'
                f"{value:.2f}")


def swatch(colour: str) -> Html:
    return Html(f'<span class="swatch" style="background:{esc(colour)}"></span>')


def mono(text: str) -> Html:
    return Html(f'<code>{esc(text)}</code>')


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for a table cell, "n/a" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def render_page(*, title: str, heading: str, subtitle: str,
                nav: Sequence[tuple[str, str]], body: str) -> str:
    """The whole page: top bar with section links, content, footer."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text in nav)
    return _PAGE.substitute(
        title=esc(title), heading=esc(heading), subtitle=esc(subtitle), nav=links,
        body=body, css=_CSS, check_script=_CHECK_SCRIPT, app=APP_NAME, version=__version__,
        code_url=esc(CODE_URL), csp=_CSP,
    )


def write_page(path: Path, **parts: str | Sequence[tuple[str, str]]) -> Path:
    """Render a page (see :func:`render_page`) and write it atomically."""
    return write_text(path, render_page(**parts))  # type: ignore[arg-type]


# nothing may be fetched: images are data URIs, style and script are inline
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")

# Records the page's health as attributes of <html> once everything loaded:
# data-images-broken counts <img> that did not decode, data-script-errors
# counts uncaught errors; the browser test asserts both are zero.
_CHECK_SCRIPT = """
(function () {
  var root = document.documentElement;
  var errors = 0;
  root.setAttribute("data-script-errors", "0");
  window.addEventListener("error", function (event) {
    if (event.target === window || event.target === undefined) {
      errors += 1;
      root.setAttribute("data-script-errors", String(errors));
    }
  });
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (img) {
      return !(img.complete && img.naturalWidth > 0);
    });
    root.setAttribute("data-images-total", String(images.length));
    root.setAttribute("data-images-broken", String(broken.length));
    root.setAttribute("data-page-check", broken.length === 0 ? "ok" : "broken-images");
  });
})();
"""

_CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #1f3f7a;
        --bg: #f5f6f8; }
* { box-sizing: border-box; }
html { scroll-padding-top: 56px; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.45;
       font-size: 15px; font-family: system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans", sans-serif; }
a { color: #1d4ed8; }
.topbar { position: sticky; top: 0; z-index: 10; display: flex; align-items: center;
          gap: 28px; background: #111827; color: #f9fafb; padding: 11px 28px;
          box-shadow: 0 1px 3px rgba(0, 0, 0, .25); }
.topbar .brand { font-weight: 700; letter-spacing: .02em; white-space: nowrap; }
.topbar .brand span { color: #9ca3af; font-weight: 400; margin-left: 6px; }
.topbar nav { display: flex; flex-wrap: wrap; gap: 4px 18px; }
.topbar nav a { color: #d1d5db; text-decoration: none; font-size: 14px; }
.topbar nav a:hover { color: #ffffff; text-decoration: underline; }
main { max-width: 1160px; margin: 0 auto; padding: 22px 28px 36px; }
h1 { font-size: 26px; margin: 6px 0 2px; }
.subtitle { color: var(--muted); margin: 0 0 18px; }
section.card { background: #ffffff; border: 1px solid var(--line); border-radius: 8px;
               padding: 16px 22px 10px; margin: 0 0 22px;
               box-shadow: 0 1px 2px rgba(0, 0, 0, .04); }
h2 { font-size: 20px; margin: 0 0 10px; padding-bottom: 8px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; color: #111827; }
p { margin: 6px 0 10px; }
p.muted { color: var(--muted); font-size: 13.5px; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; display: block; border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 980px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: middle; }
th { background: #f3f4f6; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.wide { width: 100%; }
.scroll { max-height: 520px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
.scroll table { margin: 0; width: 100%; }
.scroll th { position: sticky; top: 0; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12.5px;
         font-weight: 600; white-space: nowrap; }
.badge.ok { background: #dcfce7; color: #166534; }
.badge.bad { background: #fee2e2; color: #991b1b; }
.badge.info { background: #dbeafe; color: #1e3a8a; }
.badge.muted { background: #e5e7eb; color: #374151; }
.badge.absent { background: #eef0f3; color: #374151; }
.badge.present { background: #dbe7f7; color: #1e3a8a; }
.badge.prominent { background: #1f3f7a; color: #ffffff; }
.notice { background: #f9fafb; border-left: 4px solid #9ca3af; padding: 8px 12px;
          color: #374151; margin: 8px 0 12px; border-radius: 0 4px 4px 0; }
.notice.warn { border-color: #d97706; background: #fffbeb; }
.notice.bad { border-color: #dc2626; background: #fef2f2; }
.notice.ok { border-color: #16a34a; background: #f0fdf4; }
.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 20px; font-size: 14px;
      margin: 6px 0 12px; }
.kv dt { color: var(--muted); }
.kv dd { margin: 0; }
code { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace;
       font-size: 12.5px; word-break: break-all; background: #f3f4f6; padding: 1px 4px;
       border-radius: 3px; }
.bar { display: inline-block; width: 110px; height: 9px; background: #eceff3;
       border-radius: 5px; overflow: hidden; vertical-align: middle; margin-right: 7px; }
.bar span { display: block; height: 100%; background: var(--accent); }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
          vertical-align: -1px; margin-right: 5px; }
.stats { display: flex; flex-wrap: wrap; gap: 12px; margin: 4px 0 20px; }
.stat { background: #ffffff; border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 18px; min-width: 132px; }
.stat .value { font-size: 22px; font-weight: 700; }
.stat .label { color: var(--muted); font-size: 12.5px; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr));
           gap: 4px 28px; }
footer { text-align: center; color: var(--muted); font-size: 12.5px; padding: 8px 0 28px; }
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="$csp">
<meta name="generator" content="$app $version">
<title>$title</title>
<style>$css</style>
<script>$check_script</script>
</head>
<body>
<header class="topbar"><div class="brand">$app<span>$version</span></div><nav>$nav</nav></header>
<main>
<h1>$heading</h1>
<p class="subtitle">$subtitle</p>
$body
</main>
<footer>Generated by <a href="$code_url">$app</a> $version.
This page is self-contained: it loads no fonts, scripts or images from the network.</footer>
</body>
</html>
""")
