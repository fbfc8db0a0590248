"""Mixed-precision plans: which format each weight gets, from a YAML file of glob rules.

A plan file lists rules; the first rule whose glob matches a tensor's canonical name (`embed`,
`lm_head`, `layers.{i}.{q,k,v,o,gate,up,down}`) gives its format. Projections no rule matches get
`default:` (or --weights, or --target-bpw's choice), the embedding and output layer 8 bits. A rule
that matches no tensor is an error: a typo must not pass silently.

```yaml
default: int4g128          # optional when --weights is given
rules:
  - match: "layers.*.down"
    weights: int8          # a format name, as --weights takes it ...
  - match: ["layers.0.*", "layers.29.*"]
    bits: 4                # ... or bits / group_size / symmetric
    group_size: 32
```
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.formats import GridFormat

RULE_KEYS = {"match", "weights", "bits", "group_size", "symmetric"}


@dataclass(frozen=True)
class PlanRule:
    patterns: tuple[str, ...]
    fmt: GridFormat


@dataclass(frozen=True)
class PlanFile:
    path: Path
    rules: tuple[PlanRule, ...]
    default: GridFormat | None

    def matched(self, names: list[str]) -> dict[str, GridFormat]:
        """Canonical name -> format for the `names` some rule matches (the first that does). A rule matching none
        of `names` is an error."""
        out: dict[str, GridFormat] = {}
        used: set[int] = set()
        for name in names:
            for i, rule in enumerate(self.rules):
                if any(fnmatch.fnmatchcase(name, p) for p in rule.patterns):
                    out[name] = rule.fmt
                    used.add(i)
                    break
        for i, rule in enumerate(self.rules):
            if i not in used:
                raise EdgekitError(f"rule {i + 1} ({', '.join(rule.patterns)}) matches no tensor; names are "
                                   "embed, lm_head, layers.N.{q,k,v,o,gate,up,down}", self.path)
        return out


def _parse(name: str, group_size: int | None, fallback_group: int | None, symmetric: bool) -> GridFormat:
    """A format name; a group size in the name or the rule wins over the export's --group-size."""
    explicit = group_size if group_size is not None else (None if re.search(r"g\d+", name) else fallback_group)
    return GridFormat.parse(name, explicit, symmetric)


def _rule_format(rule: dict[str, Any], where: str, group_size: int | None) -> GridFormat:
    if "weights" in rule and "bits" in rule:
        raise EdgekitError(f"{where}: give `weights` or `bits`, not both")
    if "weights" not in rule and "bits" not in rule:
        raise EdgekitError(f"{where}: needs `weights` (e.g. int4g128) or `bits`")
    name = str(rule["weights"]) if "weights" in rule else f"int{rule['bits']}"
    return _parse(name, rule.get("group_size"), group_size, bool(rule.get("symmetric", False)))


def load_plan(path: str | Path, group_size: int | None = None) -> PlanFile:
    """Read and check a plan file (one-line errors naming the file); `group_size` fills in rules without one."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"cannot read the plan file ({exc})", path) from exc
    except yaml.YAMLError as exc:
        raise EdgekitError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list) or set(data) - {"rules", "default"}:
        raise EdgekitError("expected a mapping with `rules:` (a list) and optionally `default:`", path)
    try:
        rules = []
        for i, rule in enumerate(data.get("rules", []), 1):
            where = f"rule {i}"
            if not isinstance(rule, dict) or "match" not in rule or set(rule) - RULE_KEYS:
                raise EdgekitError(f"{where}: expected keys match and weights (or bits, group_size, symmetric)")
            patterns = rule["match"] if isinstance(rule["match"], list) else [rule["match"]]
            rules.append(PlanRule(tuple(str(p) for p in patterns), _rule_format(rule, where, group_size)))
        default = _parse(str(data["default"]), None, group_size, False) if "default" in data else None
    except EdgekitError as exc:
        raise EdgekitError(str(exc), path) from exc
    return PlanFile(path, tuple(rules), default)
