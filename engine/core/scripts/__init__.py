"""Lua scripts run by Redis; each file documents its KEYS and ARGV, and the module of the same
name beside it (``commit.py`` for ``commit.lua``) is its typed call: a frozen dataclass whose
``to_keys()``/``to_argv()`` are the one place that follows that comment, so a caller names its
arguments instead of counting positions."""
