"""Data sets: one reader per on-disk format (images, and text that ships in packages), splits and loaders."""
