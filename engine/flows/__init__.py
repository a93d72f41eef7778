"""Flows: YAML decision trees under ``rules/``, validated and compiled once at load."""

from engine.flows.loader import load_flow
from engine.flows.model import Flow
from engine.flows.registry import FlowRegistry
from engine.flows.runner import Decision, call_result, expire, resume, start, timeout, timers_of

__all__ = [
    "Decision",
    "Flow",
    "FlowRegistry",
    "call_result",
    "expire",
    "load_flow",
    "resume",
    "start",
    "timeout",
    "timers_of",
]
