"""The HTTP API (aiohttp): contacts, flow starts, inbound webhooks, conversations, messages."""
