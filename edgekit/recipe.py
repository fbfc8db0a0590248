"""A compression recipe is a value: it is printed, saved in the manifest and compared.

For an imported checkpoint the recipe records the formats the weights arrived in (kept as they are).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    method: str = "import"  # "import": weights kept exactly as the source stores them
    tensor_formats: dict[str, str] = field(default_factory=dict)  # canonical tensor name -> format

    def summary(self) -> dict[str, int]:
        return dict(Counter(self.tensor_formats.values()))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return cls(method=d["method"], tensor_formats=dict(d["tensor_formats"]))
