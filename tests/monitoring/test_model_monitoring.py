"""The model-call alerts and panels agree with the code that records the calls and with each
other (their behaviour is promtool's to test: monitoring/alert-rules.test.yml)."""

import re
from typing import Any

from api.providers.base import ModelError
from tests.monitoring.test_monitoring_config import alert_rules, dashboard

MODEL_PANELS = {"Model tokens per second": "short", "Model latency (p50, p95, p99)": "s",
                "Model time to first token (p50, p95)": "s", "Model error rate": "percentunit"}


def failure_outcomes() -> set[str]:
    """Every outcome a failed model call is counted with (ModelError and its subclasses)."""
    classes, outcomes = [ModelError], set()
    while classes:
        cls = classes.pop()
        outcomes.add(cls.outcome)
        classes.extend(cls.__subclasses__())
    return outcomes


def rule(name: str) -> dict[str, Any]:
    [found] = [rule for rule in alert_rules() if rule["alert"] == name]
    return found


def test_the_error_alert_counts_every_failure_outcome_and_not_cancelled() -> None:
    expr = rule("ModelErrorRateHigh")["expr"]
    counted = re.findall(r'outcome=~"([^"]+)"', expr)
    assert counted and all(set(value.split("|")) == failure_outcomes() for value in counted)
    assert failure_outcomes() == {"error", "timeout", "rate_limited"}
    assert 'outcome!="cancelled"' in expr


def test_the_model_panels_sit_in_their_row_and_draw_the_alert_threshold() -> None:
    panels = dashboard()["panels"]
    titles = [panel["title"] for panel in panels]
    row = titles.index("Model calls")
    assert titles[row + 1:row + 1 + len(MODEL_PANELS)] == list(MODEL_PANELS)
    by_title = {panel["title"]: panel for panel in panels}
    for title, unit in MODEL_PANELS.items():
        assert by_title[title]["fieldConfig"]["defaults"]["unit"] == unit, title
        assert by_title[title]["gridPos"]["y"] == by_title["Model calls"]["gridPos"]["y"] + 1, title

    threshold = float(re.search(r"\)\s*>\s*([0-9.]+)\s*\n\s*and", rule("ModelErrorRateHigh")["expr"])[1])
    steps = by_title["Model error rate"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps if step["value"] is not None] == [threshold]
    error_share = by_title["Model error rate"]["targets"][0]["expr"]
    assert set(re.search(r'outcome=~"([^"]+)"', error_share)[1].split("|")) == failure_outcomes()
