"""Every citation of a design page in the tracked files points at a page and section that exist, and
no local tooling or diary files are named in them.

A citation is ``docs/<page>.md``, optionally naming a section as ``docs/<page>.md#<anchor>``
(GitHub's anchor of a heading) or ``docs/<page>.md §<n>`` (the n-th ``##`` section). Inside
docs/, markdown links to a sibling page (``[rwkv.md](rwkv.md#stable-form)``) are citations too.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([\w-]+)\.md(?:#([\w-]+)|\s*§\s*(\d+))?")
SIBLING_LINK = re.compile(r"\]\(([\w-]+)\.md(?:#([\w-]+))?()\)")  # same groups as CITATION
# Spelled in pieces so that this file does not name them itself.
FORBIDDEN = ("NOTES" + ".md", "." + "peers", "." + "gpurun")


def _tracked_text_files():
    """(path relative to the root, text) of every tracked file that is UTF-8 text."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if not name or path.is_symlink() or not path.is_file():
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (wer_vs_latency.png)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _sections(page: Path):
    """(anchors of every heading, titles of the ``##`` sections in order) of a page; code blocks skipped."""
    headings, in_code = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            headings.append(line)
    sections = [h[3:].strip() for h in headings if h.startswith("## ")]
    return {github_anchor(h.lstrip("#")) for h in headings}, sections


def citation_errors(files):
    """One message per citation in ``files`` ((name, text) pairs) that points at no page or section."""
    errors = []
    for name, text in files:
        for line_no, line in enumerate(text.splitlines(), start=1):
            links = SIBLING_LINK.finditer(line) if name.startswith("docs/") else ()
            for match in [*CITATION.finditer(line), *links]:
                page_name, anchor, number = match.groups()
                page = ROOT / "docs" / f"{page_name}.md"
                where = f"{name}:{line_no}: {match.group(0)!r}"
                if not page.is_file():
                    errors.append(f"{where}: no page docs/{page_name}.md")
                    continue
                anchors, sections = _sections(page)
                if anchor is not None and anchor not in anchors:
                    errors.append(f"{where}: no heading with anchor #{anchor} (have {sorted(anchors)})")
                if number and not 1 <= int(number) <= len(sections):
                    errors.append(f"{where}: docs/{page_name}.md has {len(sections)} sections")
    return errors


def test_every_docs_citation_points_at_an_existing_page_and_section():
    this_file = str(Path(__file__).resolve().relative_to(ROOT))  # its examples below are broken on purpose
    files = [(name, text) for name, text in _tracked_text_files() if name != this_file]
    assert any(CITATION.search(text) for _, text in files), "no citation found: is the pattern still right?"
    assert citation_errors(files) == []


def test_a_missing_page_or_section_is_reported():
    files = [
        ("a.py", "see docs/no_such_page.md"),
        ("b.py", "see docs/rwkv.md#no-such-heading"),
        ("c.py", "see docs/rwkv.md §99"),
        ("d.py", "see docs/rwkv.md#stable-form and docs/rwkv.md §1"),
        ("docs/e.md", "[a](bat.md) and [b](rwkv.md#no-such-heading)"),
        ("f.py", "[b](rwkv.md#no-such-heading) is no citation outside docs/"),
    ]
    errors = citation_errors(files)
    assert [e.split(":")[0] for e in errors] == ["a.py", "b.py", "c.py", "docs/e.md"], errors


def test_no_local_tooling_or_diary_is_named():
    found = [
        f"{name}:{line_no}: {word}"
        for name, text in _tracked_text_files()
        for line_no, line in enumerate(text.splitlines(), start=1)
        for word in FORBIDDEN
        if word in line
    ]
    assert found == []
