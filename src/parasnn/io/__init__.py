"""Files: checkpoints of trained and converted networks, atomic writes."""
