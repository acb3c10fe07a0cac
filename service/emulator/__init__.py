"""An emulator of Visma Amili's invoice registration API, for tests and the local demo.

Shipped with the service but never imported by it.
"""
