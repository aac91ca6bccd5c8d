"""Command sequences in the documentation run in an order that can work.

A file a command reads must have been written by an earlier line of the same block: the
README once ran ``consentry ledger verify --remember last-seen.note`` two lines before the
``cp`` that creates ``last-seen.note``. (The README's set-up and demo blocks are executed by
``tests/integration/test_readme.py``; the reference's blocks are illustrations, checked here
for this order.)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Final

import pytest

from tests.support.peers import repo_root

_FENCE: Final = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.DOTALL)
#: Options whose value is a file that must already exist when the command runs.
_READS: Final = ("--remember",)


def _documents() -> list[Path]:
    root = repo_root()
    return [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]


def _commands(block: str) -> list[list[str]]:
    """The block's commands as words (continuation lines joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words:
            commands.append(words)
    return commands


def _writes(words: list[str]) -> set[str]:
    """Files a command line writes: ``cp SRC DEST``'s DEST and a ``> FILE`` redirection."""
    written = {words[i + 1] for i, word in enumerate(words[:-1]) if word in (">", ">>")}
    written |= {word[1:] for word in words if word.startswith(">") and len(word) > 1}
    if words[0] == "cp" and len(words) >= 3:
        written.add(words[-1])
    return written


def order_problems(block: str) -> list[str]:
    """``--remember FILE`` uses not preceded, in ``block``, by a line writing FILE."""
    problems = []
    written: set[str] = set()
    for words in _commands(block):
        for i, word in enumerate(words[:-1]):
            if word in _READS and words[i + 1] not in written:
                problems.append(f"{word} {words[i + 1]} before anything writes it")
        written |= _writes(words)
    return problems


@pytest.mark.parametrize("document", _documents(), ids=lambda p: p.name)
def test_documented_commands_read_only_files_written_before(document: Path) -> None:
    if not document.exists():
        pytest.skip(f"{document.name} is not in this checkout")
    text = document.read_text(encoding="utf-8")
    problems = [p for block in _FENCE.findall(text) for p in order_problems(block)]
    assert problems == []


def test_the_order_check_catches_a_remembered_file_used_too_early() -> None:
    """The sequence the README once printed fails; the order that runs passes."""
    early = (
        "consentry ledger verify --export ledger-export --trust trust.toml "
        "--remember last-seen.note\n"
        "cp ledger-export/latest.note last-seen.note\n"
    )
    assert order_problems(early) == ["--remember last-seen.note before anything writes it"]
    late = "\n".join(reversed(early.strip().splitlines())) + "\n"
    assert order_problems(late) == []
