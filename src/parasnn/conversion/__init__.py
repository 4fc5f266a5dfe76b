"""ANN → SNN conversion: torch.fx tracing, the rules neuron kinds register, the conversion stages and the converted network."""
