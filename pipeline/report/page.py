"""The report's HTML: one self-contained page (images inlined as data, no script, nothing fetched),
built from summary.md's markdown, with tables whose every cell reads the same folded away."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}"
         "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{max-width:700px}"
         "code{background:#f3f3f3;padding:0 2px}.verdict{background:#f6f8fa;border-left:4px solid #2b6cb0;"
         "padding:0.2em 1em}.verdict p{margin:0.4em 0}td{white-space:nowrap}details{margin:0.5em 0}")
CONSTANT = 0.01  # a table whose numbers all lie within 1% of each other says one thing: folded


def inline(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def code(escaped: str) -> str:
    """`x` as <code>x</code> and **x** as <b>x</b>, in text that is already escaped."""
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def numbers(rows: list[list[str]]) -> list[float]:
    return [float(n) for row in rows for cell in row[1:] for n in re.findall(r"-?\d+\.\d+", cell)]


def constant(body: list[list[str]]) -> bool:
    """Every number of the table's body within CONSTANT of the others (relative to the largest)."""
    values = numbers(body)
    return len(values) > 1 and max(values) - min(values) <= CONSTANT * max(abs(v) for v in values)


def table_html(head: list[str], body: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body) + "</table>")


def markdown_to_html(text: str) -> str:
    """The subset summary.md uses: ## headings, pipe tables, paragraphs and bullets. A table whose
    cells all read the same is folded under its heading, with that value said."""
    out, table, heading = [], [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([code(html.escape(c.strip())) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            if constant(body) and heading is not None and out and out[-1] == heading:
                out[-1] = (f"<details><summary>{heading[4:-5]}: about {numbers(body)[0]:g} in every cell</summary>"
                           + table_html(head, body) + "</details>")
            else:
                out.append(table_html(head, body))
            table = []
        if line.startswith("## "):
            heading = f"<h3>{code(html.escape(line[3:]))}</h3>"
            out.append(heading)
        elif line.startswith("- "):
            out.append(f"<p>&bull; {code(html.escape(line[2:]))}</p>")
        elif line.strip():
            out.append(f"<p>{code(html.escape(line))}</p>")
    return "\n".join(out)
