"""Data sets: one reader per on-disk format, splits and loaders."""
