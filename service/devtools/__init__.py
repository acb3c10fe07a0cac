"""Tools for people running the service locally: sending events and the end-to-end demo."""
