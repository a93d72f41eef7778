"""Flows: YAML decision trees under ``rules/``, validated and compiled once at load."""

from engine.flows.loader import FlowRegistry, load_flow
from engine.flows.model import Flow
from engine.flows.runner import Decision, resume, start

__all__ = ["Decision", "Flow", "FlowRegistry", "load_flow", "resume", "start"]
