"""The structured answers of build stages: what a small model's loops turn into."""

import pytest
from pydantic import ValidationError

from api.engine.answers import AgentDesign

# The design SmolLM2-135M gave at temperature 0 for a travel planner (abridged): names that loop.
LOOPING_DESIGN = {
    "agent_name": "Booking Agent", "description": "Booking and planning service",
    "category": "booking_service",
    "capabilities": ["search_flights_by_agency", "booking_service_booking_service_booking"],
    "tools": [
        {"name": "search_flights_by_agency", "description": "Searching flights by agency",
         "parameters": [{"name": "agency_agency_agency_agency_agency", "type": "str", "required": True},
                        {"name": "agency_agency_agency_agency", "type": "str", "required": True}]},
        {"name": "booking_service_booking_booking_booking", "description": "Booking",
         "parameters": [{"name": "booking_booking_booking", "type": "str", "required": True}]}],
}


def test_names_keep_each_word_once_and_parameters_that_become_one_are_merged() -> None:
    design = AgentDesign.model_validate(LOOPING_DESIGN)
    assert design.agent_name == "booking_agent"
    assert design.capabilities == ["search_flights_by_agency", "booking_service"]
    assert [tool.name for tool in design.tools] == ["search_flights_by_agency", "booking_service"]
    assert [[p.name for p in tool.parameters] for tool in design.tools] == [["agency"], ["booking"]]


def test_a_keyword_left_after_normalising_is_refused_with_a_message_the_model_can_act_on() -> None:
    looping = {**LOOPING_DESIGN, "tools": [
        {"name": "lookup", "description": "Look up", "parameters": [
            {"name": "from_from", "type": "str", "required": True}]}]}
    with pytest.raises(ValidationError, match=r"tool lookup parameter names must not be Python keywords: \['from'\]"):
        AgentDesign.model_validate(looping)
