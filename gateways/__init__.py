"""Connectors to the outside world: HTTP providers now, SMPP next, and the send pipeline."""
