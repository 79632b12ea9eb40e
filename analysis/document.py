"""A tiny document model for the report, rendered to Markdown and to self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
import struct
from dataclasses import dataclass, field
from typing import Any, List, Tuple


@dataclass
class Doc:
    """Blocks of a report: ("h1"|"h2"|"p"|"ul"|"code"|"table"|"img", payload)."""

    blocks: List[Tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))

    def to_markdown(self) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h1":
                out.append(f"# {x}")
            elif kind == "h2":
                out.append(f"## {x}")
            elif kind == "p":
                out.append(x)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in x))
            elif kind == "code":
                out.append(f"```\n{x}\n```")
            elif kind == "table":
                out.append((f"*{x.caption}*\n\n" if x.caption else "") + x.to_markdown())
            elif kind == "img":
                path, alt = x
                out.append(f"![{alt}]({path.name})")
        return "\n\n".join(out) + "\n"

    def to_html(self, title: str) -> str:
        body = []
        for kind, x in self.blocks:
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{_inline(x)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(x)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in x) + "</ul>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(x)}</code></pre>")
            elif kind == "table":
                body.append(f'<div class="scroll">{x.to_html()}</div>')
            elif kind == "img":
                path, alt = x
                raw = path.read_bytes()
                width = struct.unpack(">I", raw[16:20])[0] * 96 // plots_dpi()  # PNG IHDR width, in CSS px
                data = base64.b64encode(raw).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(alt)}" style="width:{width}px" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
                + "\n".join(body) + "\n</main></body></html>\n")


CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1f2328;background:#fff;margin:0;line-height:1.5}
main{max-width:1200px;margin:0 auto;padding:24px 32px}
h1{font-size:1.7em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #eaeef2;padding-bottom:.2em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px}
pre{background:#f6f8fa;padding:12px;border-radius:6px;overflow-x:auto}
pre code{background:none;padding:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
caption{caption-side:top;text-align:left;color:#57606a;font-size:.92em;padding-bottom:6px}
th,td{border-top:1px solid #d0d7de;border-bottom:1px solid #d0d7de;padding:5px 10px;white-space:nowrap}
th{background:#f6f8fa;font-weight:600;white-space:normal;vertical-align:bottom;min-width:4em}
td.left,th.left{text-align:left}td.right,th.right{text-align:right;font-variant-numeric:tabular-nums}
td.center,th.center{text-align:center}
tbody tr:nth-child(even){background:#fbfcfd}
figure{margin:16px 0}img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}
"""


def plots_dpi() -> int:
    """The figures' dots per inch (they are shown at 96 CSS px per inch, so text sizes match)."""
    from analysis.plots import DPI

    return DPI


def _inline(text: str) -> str:
    """Escape, then ``code`` and **bold** to HTML."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", t)
