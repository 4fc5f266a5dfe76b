"""Model architectures (the model zoo) and their specifications."""
