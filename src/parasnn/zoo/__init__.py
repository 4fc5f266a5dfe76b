"""Model architectures (the model zoo): CNNs from a ModelSpec, a small ViT, and a BERT encoder that reads pretrained all-MiniLM-L6-v2 weights."""
