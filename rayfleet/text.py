"""Text that people read: terminal escapes stripped from saved logs, long details cut with the way to see the rest."""

from __future__ import annotations

import re

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and the two-byte escapes: what a terminal acts
# on and a file shows as noise
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences (ANSI colours, cursor moves, OSC titles and links)."""
    return _ESCAPES.sub("", text)


def shorten(text: str, limit: int, rest: str = "") -> str:
    """``text`` cut to at most ``limit`` characters at a line or word end, saying how much was cut and, when given,
    where the rest is (``rest``: e.g. "see 'rayfleet logs rf-1'")."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind("\n"), cut.rfind(" "))
    if end > limit // 2:
        cut = cut[:end]
    note = f"[{len(text) - len(cut)} more characters" + (f"; {rest}]" if rest else "]")
    return f"{cut.rstrip()} … {note}"


def first_line(text: str | None, limit: int) -> str:
    """The first non-blank line of ``text``, without terminal escapes, cut to ``limit`` (`shorten`); "" if none."""
    lines = [line.strip() for line in strip_escapes(text or "").splitlines() if line.strip()]
    return shorten(lines[0], limit) if lines else ""
