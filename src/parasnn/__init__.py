"""parasnn — convert trained PyTorch networks into spiking networks that run in one parallel pass."""
__version__ = "0.1.0"
