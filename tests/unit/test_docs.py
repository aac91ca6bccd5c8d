"""The user documentation cites only what the repository holds, and names no issue numbers.

Checked in ``README.md``, ``CONTRIBUTING.md`` and ``docs/*.md``:

- every relative Markdown link resolves to a file or folder of the repository, and its
  ``#anchor``, when it has one and names a Markdown file, to one of that file's headings
  (GitHub's slugs);
- every repository path the text names (in backticks, or as a word of a fenced code block)
  exists; only words that look like repository paths are checked: they start with one of
  :data:`REPO_ROOTS` and hold no placeholder (``*``, ``<``, ``{``, ``$``);
- no file outside the repository is cited (``../shared/...``): a reader of a fresh clone has
  nothing beside it (saying that a folder is expected beside the checkout is not a citation);
- no ``#<digits>`` issue reference appears;
- every setting (:class:`~middleware.settings.Settings` and the ``[auth]`` table) has a row in
  ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from middleware.auth.settings import AuthSettings, IssuerSettings
from middleware.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

REPO_ROOTS = (
    "middleware/",
    "tests/",
    "scripts/",
    "bench/",
    "docs/",
    "deploy/",
    "mappings/",
    ".ci/",
)

# Written by the benchmarks and ignored by git: the docs name them as where output goes.
GENERATED = frozenset({"bench/results/"})

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
ISSUE_REF = re.compile(r"(?<![\w&/#])#\d+\b")
OUTSIDE = re.compile(r"\.\./shared/[^\s`)\]]+")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
PLACEHOLDER = re.compile(r"[*<>{}$]")
TRAILING = "\"'`,;:.)]"


def doc_files() -> list[Path]:
    """The user documentation this test keeps honest."""
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown text's headings (fenced code left out: ``#`` comments)."""
    return {slug(match) for match in HEADING.findall(FENCE.sub("", markdown))}


def repo_paths(markdown: str) -> list[str]:
    """The words of a Markdown text that look like repository paths."""
    fenced = [block.group(0) for block in FENCE.finditer(markdown)]
    words: list[str] = CODE_SPAN.findall(FENCE.sub("", markdown))
    for block in fenced:
        words.extend(block.split())
    found = []
    for raw in words:
        word = raw.strip().lstrip("@\"'(").rstrip(TRAILING)
        if word.startswith(REPO_ROOTS) and not PLACEHOLDER.search(word) and " " not in word:
            found.append(word)
    return found


def broken_links(path: Path, markdown: str) -> list[str]:
    """Relative links of ``path``'s text whose target or heading anchor does not exist."""
    problems = []
    for target in LINK.findall(FENCE.sub("", markdown)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            problems.append(f"link {target!r}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            problems.append(f"link {target!r}: no heading with that anchor")
    return problems


def problems_in(path: Path) -> list[str]:
    """Everything wrong with one documentation file, one message per problem."""
    markdown = path.read_text(encoding="utf-8")
    problems = broken_links(path, markdown)
    for word in repo_paths(markdown):
        if word not in GENERATED and not (ROOT / word).exists():
            problems.append(f"path {word!r} is not in the repository")
    problems += [f"cites a file outside the repository: {m!r}" for m in OUTSIDE.findall(markdown)]
    problems += [f"issue reference {m!r}" for m in ISSUE_REF.findall(markdown)]
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_cites_only_the_repository(path: Path) -> None:
    """Links, paths and references in the user documentation are all real, none an issue."""
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert problems_in(path) == []


def test_docs_folder_holds_the_reference() -> None:
    """The README's map of docs/ names files that exist (the link check covers each link)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {target for target in LINK.findall(readme) if target.startswith("docs/")}
    assert linked, "the README links no docs/ file"


def table_settings(markdown: str) -> set[str]:
    """The names in backticks in the first cell of each table row of a Markdown text."""
    names: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


@pytest.mark.parametrize(
    ("settings", "exempt"),
    [(Settings, {"auth"}), (AuthSettings, set())],
    ids=["settings", "auth"],
)
def test_every_setting_is_documented(settings: type, exempt: set[str]) -> None:
    """A setting added to the code has a row (default and meaning) in docs/configuration.md."""
    documented = table_settings((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    fields = {field.name for field in dataclasses.fields(settings)} - exempt
    assert sorted(fields - documented) == []


def test_every_issuer_key_is_documented() -> None:
    """Each key of an ``[[auth.issuers]]`` entry is named in docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    named = set(CODE_SPAN.findall(text))
    assert sorted({f.name for f in dataclasses.fields(IssuerSettings)} - named) == []


# The checker itself: each rule fires on what it should and only on that.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fixed in #12.", ["#12"]),
        ("(see issue #5)", ["#5"]),
        ("an entity &#123; is not one", []),
        ("[x](docs/a.md#section-2)", []),
        ("RFC 9162 §2.1.4 and C# code", []),
        ("```\n# 401: a shell comment\n```", []),
    ],
    ids=["bare", "parenthesised", "html-entity", "anchor", "section-sign", "shell-comment"],
)
def test_issue_reference_rule(text: str, expected: list[str]) -> None:
    """Only ``#<digits>`` standing on its own counts as an issue reference."""
    assert ISSUE_REF.findall(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see `middleware/app.py`", ["middleware/app.py"]),
        ("`tests/leak/` holds them", ["tests/leak/"]),
        ("`bench/results/<name>.json`", []),
        ("`python -m bench.ledger`", []),
        ("`consentry serve`", []),
        ("```bash\nbash scripts/test.sh -q\n```", ["scripts/test.sh"]),
        ('```toml\nprofile = "mappings/profiles/x.json"\n```', ["mappings/profiles/x.json"]),
    ],
    ids=["span", "folder", "placeholder", "module", "command", "fenced", "fenced-quoted"],
)
def test_repo_path_rule(text: str, expected: list[str]) -> None:
    """Only words that look like repository paths are checked."""
    assert repo_paths(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bash ../shared/peers/install-upstream.sh", ["../shared/peers/install-upstream.sh"]),
        ("--data-binary @../shared/data/p.json |", ["../shared/data/p.json"]),
        ("a folder `../shared` beside the checkout", []),
        ("`../shared`, or `$SHARED_DIR`", []),
    ],
    ids=["script", "data-file", "folder-mention", "folder-or-variable"],
)
def test_outside_rule(text: str, expected: list[str]) -> None:
    """Citing a file beside the checkout is a problem; saying the folder is expected is not."""
    assert OUTSIDE.findall(text) == expected


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("## Choosing the upstream client", "choosing-the-upstream-client"),
        ("## `ledger verify` report", "ledger-verify-report"),
        ("### Bodies and sizes", "bodies-and-sizes"),
    ],
    ids=["words", "code", "level-3"],
)
def test_anchor_rule(heading: str, expected: str) -> None:
    """Anchors follow GitHub's heading slugs."""
    assert anchors(heading) == {expected}


def test_broken_links_are_reported() -> None:
    """A link to a missing file, a missing heading or outside the repository is a problem."""
    page = ROOT / "docs" / "page.md"  # never written: only its folder matters
    text = (
        "[a](missing.md) [b](configuration.md#no-such-heading) [c](../../x.md) [d](https://e.org)"
    )
    assert [p.split(":")[0] for p in broken_links(page, text)] == [
        "link 'missing.md'",
        "link 'configuration.md#no-such-heading'",
        "link '../../x.md'",
    ]
