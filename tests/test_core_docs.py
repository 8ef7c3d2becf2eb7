"""The repository stands on its own: citations point at docs/formulation.md, and its sections exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = ["slabopt", "llm", "proofs_checks", "benchmarks", "tests"]
OWN_DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def own_files():
    for folder in OWN:
        yield from sorted((ROOT / folder).rglob("*.py"))
    for doc in OWN_DOCS:
        yield ROOT / doc


def sections():
    text = (ROOT / "docs" / "formulation.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))


def test_no_citation_of_a_specification_outside_the_repository():
    word = "SP" + "EC"  # spelled apart so that this file does not cite it either
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in own_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if word in line]
    assert offenders == []


def test_nothing_cites_an_issue_number():
    """Code, tests and docs say what is true, not which work item it came from."""
    pattern = re.compile(r"\bissues? \d+", re.I)  # (public threads are cited as owner/repo issue #N)
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in own_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_every_cited_formulation_section_exists():
    known = sections()
    assert {"1", "2.1", "2.2", "3", "3.1", "3.2", "4", "4.3", "5.1", "5.2", "5.3", "6", "7"} <= known
    cited = set()
    for path in own_files():
        for ref in re.findall(r"formulation(?:\.md)? §([\d.§\-–, ]+)", path.read_text()):
            cited |= set(re.findall(r"\d+(?:\.\d+)?", ref))
    assert cited and cited <= known, sorted(cited - known)
