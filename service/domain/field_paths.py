"""The docs table of the seed mapping, where the schema generator (``service.events.schemas``) reads
it. The field table itself lives with the Amili adapter (``service.amili.mapping``); this module goes
when the generator reads it from there."""

from service.amili.mapping import seed_field_table

__all__ = ["seed_field_table"]
