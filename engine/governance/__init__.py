"""Consent and its keywords, opt-out intent, quiet hours, erasure."""
