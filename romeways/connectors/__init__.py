"""Built-in connectors, one module per backend."""
