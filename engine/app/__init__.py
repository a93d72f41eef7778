"""The composition root (runtime, supervisor) and the programs built on it (CLI, chat, demo)."""
