"""The engine's foundation: configuration, errors, clock, Redis keys and store, metrics, logs."""
