"""Putting free text into markdown safely. Pure: no I/O.

Text that comes from people or systems (an approver's reason, a commit subject, a config
diff) must show as written and never become markup: a reason of `<script>` or a diff line
of three backticks must not change what the approver reads around it.
"""

from __future__ import annotations

import html
import re

# Characters that can start markup inside a line; `<`, `>` and `&` are HTML-escaped instead.
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape(text: object) -> str:
    """`text` as literal markdown inline text: HTML escaped, markdown punctuation
    backslash-escaped, newlines folded to spaces (an inline value stays on its line)."""
    flat = " ".join(str(text).split())
    return _SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def code(text: object) -> str:
    """`text` as an inline code span, whatever backticks it holds."""
    flat = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def fence(text: str, language: str = "") -> str:
    """`text` in a fenced code block whose fence no line of the text can close."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"
