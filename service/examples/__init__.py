"""Realistic sample invoice-created events, used by the demo and the tests."""
