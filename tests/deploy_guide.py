"""Read the code blocks of docs/deploy.md, so the tests run what the guide says."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def block(language: str, containing: str) -> str:
    """The one fenced block of ``language`` whose text contains ``containing``."""
    found = [
        body
        for lang, body in FENCE.findall(GUIDE.read_text(encoding="utf-8"))
        if lang == language and containing in body
    ]
    assert len(found) == 1, f"docs/deploy.md: {len(found)} {language} blocks with {containing!r}"
    return found[0]


def replace_all(text: str, replacements: dict[str, str]) -> str:
    """Replace each key by its value, failing when the guide no longer has the key."""
    for old, new in replacements.items():
        assert old in text, f"docs/deploy.md no longer has {old!r}: update the test"
        text = text.replace(old, new)
    return text
