"""Process-level helpers: torch.distributed (torchrun), progress reporting, option checks and
the order statistics activation ranges are read from."""
