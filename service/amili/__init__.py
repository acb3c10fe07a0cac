"""Visma Amili: wire models of the API and the HTTP client."""
