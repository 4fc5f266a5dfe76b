"""``parasnn evaluate --method pascal``: PASCAL's layer-pipelined serial SNN
(:mod:`parasnn.methods.pascal`) evaluated from the command line."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["command_evaluate"]


def command_evaluate(args, ann: torch.nn.Module, network, batches: list, *, spec, dataset: str) -> int:
    """Table on screen, JSON on request (``args.json``, with ``<stem>.config.json`` beside it)."""
    from ..io.files import write_json
    from ..methods.pascal import evaluate_pascal, format_pascal
    from .arguments import config_path
    evaluation = evaluate_pascal(ann, network, batches, accumulation=args.pascal_accumulation,
                                 activity=not args.no_activity)
    print(format_pascal(evaluation, title=f"PASCAL: {spec.name} on {dataset} ({evaluation.samples} test images)"))
    if args.json:
        resolved = {"command": "evaluate", "method": "pascal", "checkpoint": str(args.checkpoint),
                    "snn": str(args.snn) if args.snn else None, "limit": args.limit, "dataset": dataset,
                    "accumulation": evaluation.accumulation, "device": str(args.device)}
        write_json(args.json, {"config": resolved, "model": spec.to_dict(), **evaluation.to_dict()})
        write_json(config_path(Path(args.json)), resolved)
    return 0
