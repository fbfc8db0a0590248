"""Structured pruning: remove attention heads, key/value groups, MLP channels and whole layers by measured
importance, recover by distillation, and write a smaller Hugging Face folder (docs/cli.md, `edgekit prune`)."""

from edgekit.exporters.prune.pipeline import PruneResult, prune
from edgekit.exporters.prune.request import PruneRequest, load_prune_plan, request_from_options
from edgekit.exporters.prune.surgery import load_pruned, pruning_record

__all__ = [
           "PruneRequest",
           "PruneResult",
           "load_prune_plan",
           "load_pruned",
           "prune",
           "pruning_record",
           "request_from_options",
]
