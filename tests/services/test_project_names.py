"""A project created without a name is named after its requirement's first line."""

import pytest

from api.services.project_service import MAX_DEFAULT_NAME, default_project_name


@pytest.mark.parametrize(("requirement", "name"), [
    ("Triage support tickets", "Triage support tickets"),
    ("\n  Triage support tickets  \nand answer refunds", "Triage support tickets"),
    ("x" * 80, "x" * 80),
    ("Build an agent that triages customer support tickets, answers refund questions and "
     "escalates the rest", "Build an agent that triages customer support tickets, answers refund questions…"),
    ("y" * 120, "y" * 79 + "…"),
])
def test_the_default_name_is_the_first_line_cut_at_a_word(requirement: str, name: str) -> None:
    assert default_project_name(requirement) == name
    assert len(default_project_name(requirement)) <= MAX_DEFAULT_NAME
