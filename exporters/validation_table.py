"""The text table validate reports print: one aligned `name  value` line per fact, the verdict last."""

from __future__ import annotations


def validation_table(rows: list[tuple[str, str]], failures: list[str]) -> str:
    """rows and a `result` row (PASS, or FAIL and every failure), names padded to one width."""
    rows = [*rows, ("result", "PASS" if not failures else "FAIL: " + "; ".join(failures))]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
