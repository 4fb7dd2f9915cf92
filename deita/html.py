"""Self-contained HTML pages for the reports: inline CSS, images embedded as base64 ``data:`` URIs, no
scripts and no links, so one file can be mailed, uploaded to the Hub or opened offline."""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Optional

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td { max-width: 30em; overflow-wrap: anywhere; } th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; max-width: 700px; }
.warning { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 1em; }
.note { color: #555; font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def page(title: str, body: Iterable[str]) -> str:
    """A whole HTML document: ``title`` as its title and first heading, then the ``body`` fragments."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
                      f"<h1>{esc(title)}</h1>", *body, "</body>", "</html>", ""])


def figure(png: bytes, title: str, caption: str = "") -> str:
    """A ``<figure>``: the PNG embedded as a data URI, ``title`` as its alt text, an optional caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(title)}">{cap}</figure>'


def table(header: Optional[list[str]], rows: Iterable[Iterable[Any]]) -> str:
    """A ``<table>`` (no header row when ``header`` is None); numbers are right-aligned, floats shown in 4
    significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"<td>{esc(v)}</td>"
        return f'<td class="num">{esc(f"{v:.4g}" if isinstance(v, float) else v)}</td>'

    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>\n" if header else ""
    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>\n{head}{body}\n</table>"
