"""Measuring converted networks: accuracy, firing rates and energy, ablations, plots, text-embedding measures."""
