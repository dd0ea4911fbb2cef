"""Glob patterns (``photos/**/*.jpg``) as regular expressions that Arrow (RE2) and Python's ``re``
both accept, so a pattern filters a whole column of paths in one Arrow kernel call."""

from __future__ import annotations

import re

__all__ = ["GLOB_CHARS", "glob_regex", "glob_regex_source", "split_glob"]

#: Characters that make a path a glob pattern.
GLOB_CHARS = frozenset("*?[")


def _literal(char: str) -> str:
    """A character as a regex literal valid in both Python's ``re`` and RE2 (Arrow)."""
    if char.isalnum() or char in "_/" or ord(char) > 127:
        return char
    return f"\\x{ord(char):02x}"


def glob_regex_source(pattern: str) -> str:
    """Regex (RE2 and Python syntax, to be matched whole) for a ``/``-separated glob.

    ``*``, ``?``, ``[...]`` stay in one segment; a ``**`` segment matches any number of
    segments (including none).
    """
    segments = pattern.split("/")
    out: list[str] = ["(?s)"]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        i = 0
        while i < len(segment):
            char = segment[i]
            if char == "*":
                out.append("[^/]*")
            elif char == "?":
                out.append("[^/]")
            elif char == "[" and _class_end(segment, i) > 0:
                end = _class_end(segment, i)
                body = segment[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                # Ranges (a-z) stay ranges; every other character is a literal.
                members = "".join(c if c == "-" else _literal(c) for c in body)
                out.append("[" + ("^" if negate else "") + members + "]")
                i = end
            else:
                out.append(_literal(char))
            i += 1
        if not last:
            out.append("/")
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """:func:`glob_regex_source` compiled with Python's ``re`` (use ``fullmatch``)."""
    return re.compile(glob_regex_source(pattern))


def _class_end(segment: str, start: int) -> int:
    """Index of the "]" closing the character class opened at ``start``, or -1."""
    j = start + 1
    if j < len(segment) and segment[j] == "!":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1  # a "]" first in the class is a literal, as in fnmatch
    return segment.find("]", j)


def split_glob(path: str) -> tuple[str, str]:
    """``"bucket/photos/**/*.jpg"`` -> ``("bucket/photos", "**/*.jpg")``."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if GLOB_CHARS & set(part):
            return "/".join(parts[:index]) or ("/" if path.startswith("/") else ""), "/".join(
                parts[index:]
            )
    return path, ""
