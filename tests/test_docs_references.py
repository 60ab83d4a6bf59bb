"""Docs and docstrings refer to files inside the repository only (docs/design.md, not the
development machine's DESIGN.md or shared/ folders); tests may read shared data at run time."""

from __future__ import annotations

import re

from tests.conftest import REPO

OUTSIDE = re.compile(r"DESIGN\.md|shared/(papers|reference|data)|\.\./shared")


def test_docs_and_sources_name_no_file_outside_the_repository():
    files = [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "src").rglob("*.py"))]
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)


def test_design_page_links_resolve():
    text = (REPO / "docs" / "design.md").read_text()
    links = re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", text)
    assert {"manifest.md", "cache_schema.md", "methods.md", "sweep.md"} <= set(links)
    assert [link for link in links if not (REPO / "docs" / link).exists()] == []
