"""nn.Modules, one layer family per file: the Mamba mixer, S4/S4D, attention, RNN cells, MLP, norms, block."""
