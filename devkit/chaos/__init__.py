"""The chaos run (``amili-registrar chaos``): ``run.py``."""
