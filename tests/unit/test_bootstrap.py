from __future__ import annotations

import gc

from service.bootstrap import YOUNG_GENERATION_THRESHOLD, build_registrar, freeze_long_lived_objects
from service.config import Settings


def test_the_service_freezes_what_lives_long_and_collects_seldom_once_started() -> None:
    registrar = build_registrar(Settings(amili_api_key="key", ledger_url="sqlite://"))
    hooks = registrar.app._after_startup_calling
    assert [hook.__name__ for hook in hooks][-1] == freeze_long_lived_objects.__name__
    thresholds = gc.get_threshold()
    gc.unfreeze()
    try:
        freeze_long_lived_objects()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
