"""Helpers to write notebook cells as indented triple-quoted strings."""

from textwrap import dedent

Cell = tuple[str, str]


def md(text: str) -> Cell:
    """A markdown cell (the text is dedented and stripped)."""
    return ("md", dedent(text).strip())


def code(text: str) -> Cell:
    """A code cell (the source is dedented and stripped)."""
    return ("code", dedent(text).strip())

