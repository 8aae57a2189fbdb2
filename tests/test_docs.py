"""The docs' relative links resolve, and no doc points at the team's private briefing.

Checked: every markdown link and image (``[text](target)``, ``![alt](target)``, reference
definitions ``[label]: target``) in README.md and docs/**/*.md, outside code. A relative target
must be an existing file; an anchor into a markdown file must name one of its headings, slugged
as GitHub slugs them. A path in backticks is not a link and is not checked here.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"\]\(\s*<?([^()\s<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A folder named `shared` in a path (`shared/x`, `../shared`, `a/shared/b`), not the word.
SHARED = re.compile(r"(?<![\w.-])shared/|/shared(?![\w.-])")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The file's numbered lines outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0] * len(opening.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        lines.append((number, line))
    return lines


def links(path: Path) -> list[tuple[int, str]]:
    """Every link target in the file, with its line number; code spans hold no links."""
    found, after_break = [], True
    for number, raw in prose_lines(path):
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), raw)
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        # A reference definition cannot interrupt a paragraph: "[1, 2]: 0.9" mid-text is prose.
        definition = REFERENCE_DEF.match(line) if after_break else None
        if definition:
            found.append((number, definition.group(1)))
        after_break = not line.strip() or definition is not None
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(path):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return frozenset(found)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # an external URL (http:, mailto:, ...) is not checked here
        name, _, anchor = target.partition("#")
        name = unquote(name.split("?", 1)[0])
        resolved = (path.parent / name).resolve() if name else path
        where = f"{shown(path)}:{number}: {target}"
        if not resolved.is_file():
            problems.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where} (no heading #{anchor} in {resolved.name})")
    return problems


def test_the_docs_are_found() -> None:
    assert ROOT / "README.md" in DOCS
    assert any(doc.parent.name == "notes" for doc in DOCS), "docs/notes/*.md missing"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Three tasks at 100k frames", "three-tasks-at-100k-frames"),
        ("Tier M: 100k frames (`--tier M`)", "tier-m-100k-frames---tier-m"),
        ("1.2 Deterministic policies: the flow", "12-deterministic-policies-the-flow"),
        ("Cost (`python -m benchmarks.update_speed`)", "cost-python--m-benchmarksupdate_speed"),
        ("See [the notes](notes/x.md)", "see-the-notes"),
    ],
)
def test_headings_slug_as_on_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_checker_catches_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n"
        "[ok](other.md) [ok](other.md#a-code-heading) [ok](#title) [web](https://x.org/y)\n"
        "[missing](nowhere.md) [bad anchor](other.md#no-such) ![img](pic.png)\n"
        "`[in code](nowhere.md)`\n\n"
        "```\n[fenced](nowhere.md)\n```\n\n"
        "[ref]: gone.md\n"
    )
    problems = broken_links(doc)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "nowhere.md (no such file)",
        "other.md#no-such (no heading #no-such in other.md)",
        "pic.png (no such file)",
        "gone.md (no such file)",
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    problems = broken_links(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_points_at_the_private_briefing(doc: Path) -> None:
    hits = [
        f"{doc.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if SHARED.search(line)
    ]
    hits += [
        f"{doc.relative_to(ROOT)}:{number}: link to {target}"
        for number, target in links(doc)
        if "shared" in Path(unquote(target.partition("#")[0])).parts
    ]
    assert not hits, "docs must not refer to the private `shared` folder:\n" + "\n".join(hits)


def test_the_wheels_long_description_links_to_nothing_a_wheel_lacks() -> None:
    # pyproject's readme is the wheel's long description: a relative link there points at a
    # file the wheel does not ship.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (ROOT / pyproject["project"]["readme"]).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert [t for t in targets if "://" not in t] == []
