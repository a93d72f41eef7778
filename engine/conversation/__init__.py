"""A conversation's path: intake, the worker and its turn, sessions, shards, outcomes, calls."""
