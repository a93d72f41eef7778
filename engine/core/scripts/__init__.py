"""Lua scripts run by Redis; each file documents its KEYS and ARGV."""
