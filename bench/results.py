"""What an item reports: rows of alternated A/B measurements, their per-pair ratios, a target."""

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}"


@dataclass
class Side:
    label: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Row:
    item: int
    name: str
    a: Side
    b: Side | None = None
    # One ratio A/B per alternated pair; empty for a row that only reports A.
    ratios: list[float] = field(default_factory=list)
    target: Target | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.target.met(self.ratio)

    def problems(self) -> list[str]:
        """Why the row's numbers cannot be right (not: why the target was missed)."""
        found = []
        for side in filter(None, (self.a, self.b)):
            if not side.values:
                found.append(f"{side.label}: no measurement")
            elif not all(math.isfinite(v) and v > 0 for v in side.values):
                found.append(f"{side.label}: values not positive and finite: {side.values}")
        if self.b is not None and not self.ratios:
            found.append("no ratio")
        if not all(math.isfinite(r) and r > 0 for r in self.ratios):
            found.append(f"ratios not positive and finite: {self.ratios}")
        return found

    def to_json(self) -> dict[str, object]:
        return {
            "item": self.item, "name": self.name,
            "a": {"label": self.a.label, "unit": self.a.unit, "values": self.a.values},
            "b": None if self.b is None else {"label": self.b.label, "unit": self.b.unit,
                                               "values": self.b.values},
            "ratios": self.ratios, "ratio": self.ratio,
            "target": None if self.target is None else str(self.target), "met": self.met,
            "notes": self.notes,
        }


@dataclass
class ItemResult:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    # Exact commands: servers, then load generators.
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def command(self, text: str) -> None:
        if text not in self.commands:
            self.commands.append(text)
