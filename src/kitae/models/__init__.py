"""Models: sources (hub, folder, GGUF), loading, pooling, adapters, precision, saving."""
