"""Process-level helpers: torch.distributed (torchrun) and progress reporting."""
