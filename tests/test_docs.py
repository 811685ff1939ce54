"""The docs point at things that exist: every relative link of README.md and docs/, and every
repository path they name in backticks (a file moved without its docs fails here)."""

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

# The users' guide, kept as they wrote it: its paths are theirs (docs/MONITORING.md maps them).
USERS_GUIDE = "MONITORING_AND_LOGGING.md"
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != USERS_GUIDE)]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
REPO_PATH = re.compile(r"`((?:api|tests|bench|scripts|monitoring|deploy|docs)/[A-Za-z0-9_./-]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_links_and_named_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    links = [target for target in LINK.findall(text) if not target.startswith(("http://", "https://"))]
    missing = [target for target in links if not (doc.parent / target).exists()]
    missing += [path for path in REPO_PATH.findall(text) if not (REPO / path).exists()]
    assert missing == []
