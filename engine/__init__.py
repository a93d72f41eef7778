"""Parley: a conversational SMS engine."""

__version__ = "0.1.0"
