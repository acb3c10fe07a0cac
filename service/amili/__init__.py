"""Visma Amili: wire models of the API, the mapping from our invoice to them, and the HTTP client."""
