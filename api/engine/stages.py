"""The six build stages, their weights in `progress`, and the progress formula."""

from dataclasses import dataclass

from api.core.records import Stage, SubStage


@dataclass(frozen=True)
class StageSpec:
    name: str
    weight: int
    sub_stages: tuple[tuple[str, int], ...] = ()


STAGES: tuple[StageSpec, ...] = (
    StageSpec("orchestrator", 5),
    StageSpec("requirements_analysis", 10),
    StageSpec("system_architecture", 15),
    StageSpec("agent_design", 15),
    StageSpec("agent_developer_manager", 45,
              (("tool_developer", 40), ("prompt_engineer", 30), ("agent_code_developer", 30))),
    StageSpec("agent_deployer", 10),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
STATUS_SHARE = {"completed": 1.0, "running": 0.5}


def initial_stages() -> list[Stage]:
    """The stage snapshot of a new build: every stage and sub-stage pending."""
    return [
        Stage(name=spec.name, order=order, weight=spec.weight, status="pending",
              sub_stages=[SubStage(name=name, weight=weight, status="pending")
                          for name, weight in spec.sub_stages])
        for order, spec in enumerate(STAGES, start=1)
    ]


def progress(stages: list[Stage]) -> float:
    """Sum of weight x (1 completed, 0.5 running); a running stage with sub-stages counts
    them the same way inside its weight."""
    total = 0.0
    for stage in stages:
        if stage.status == "running" and stage.sub_stages:
            inner = sum(sub.weight * STATUS_SHARE.get(sub.status, 0.0) for sub in stage.sub_stages)
            total += stage.weight * inner / 100
        else:
            total += stage.weight * STATUS_SHARE.get(stage.status, 0.0)
    return round(total, 2)
