"""``parasnn train --levels auto``: PASCAL's adaptive layerwise activation
(:mod:`parasnn.methods.adaptive_levels`) from the command line."""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import positive_int_list

__all__ = ["level_choices", "add_train_arguments", "command_train"]


def level_choices(text: str) -> tuple[int, ...]:
    """``2,4,8`` → ``(2, 4, 8)``: the L of the layer groups, least to most sensitive."""
    return tuple(positive_int_list(text))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``parasnn train`` that only ``--levels auto`` uses."""
    from ..methods.adaptive_levels import DEFAULT_LEVEL_CHOICES
    group = parser.add_argument_group("adaptive layerwise activation (--levels auto)")
    group.add_argument("--level-choices", type=level_choices, default=DEFAULT_LEVEL_CHOICES,
                       help="L given to the layer groups from least to most sensitive; their number is the number "
                            "of groups (default 2,4,8)")
    group.add_argument("--finetune-epochs", type=int, help="epochs of the fine-tuning phase (default: --epochs)")
    group.add_argument("--finetune-lr", type=float, help="peak learning rate of the fine-tuning (default: --lr / 10)")


def command_train(config, args) -> int:
    """:func:`parasnn.methods.adaptive_levels.train_adaptive` with the parsed options."""
    from ..methods.adaptive_levels import train_adaptive
    result = train_adaptive(config, out_dir=args.out, level_choices=args.level_choices,
                            finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                            resume=not args.no_resume, device=args.device)
    analysis = result["adaptive_levels"]
    levels = ",".join(str(level) for level in analysis["levels"])
    print(f"levels per layer {levels}; probe test accuracy {100 * analysis['probe_test_accuracy']:.2f}%, "
          f"fine-tuned test accuracy {100 * result['test_accuracy']:.2f}%  -> {Path(args.out) / 'model.pt'}")
    return 0
