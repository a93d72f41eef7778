"""The CRM side: contacts, their import, journeys, reports, outcome webhooks."""
