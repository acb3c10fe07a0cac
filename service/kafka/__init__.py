"""Kafka adapters: the FastStream application, result and dead-letter publishing."""
