"""
The README's error table is the one L{easymesh.errors.CAUSE_TABLE} makes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from easymesh.errors import MARKDOWN_BEGIN, MARKDOWN_END, causesMarkdown, withCausesMarkdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readmeTableIsGenerated() -> None:
    """
    The README's table between the C{causes} comments is the generated
    one; if not, the message says how to regenerate it.
    """
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKDOWN_BEGIN) == 1 and text.count(MARKDOWN_END) == 1
    shown = text.split(MARKDOWN_BEGIN + "\n", 1)[1].split(MARKDOWN_END, 1)[0]
    assert shown == causesMarkdown(), (
        "README.md's error table differs from easymesh/errors.py's CAUSE_TABLE; "
        "regenerate it with: python -m easymesh causes --update README.md"
    )


def test_withCausesMarkdownReplacesOnlyTheTable() -> None:
    """
    Regenerating keeps everything around the comments, and needs them.
    """
    text = f"before\n{MARKDOWN_BEGIN}\n| old |\n{MARKDOWN_END}\nafter\n"
    assert withCausesMarkdown(text) == (
        f"before\n{MARKDOWN_BEGIN}\n{causesMarkdown()}{MARKDOWN_END}\nafter\n"
    )
    with pytest.raises(ValueError):
        withCausesMarkdown("no table here\n")
