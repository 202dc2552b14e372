"""The daemon's garbage-collector tuning (ssmd.cli.tune_gc), restored after the test."""

from __future__ import annotations

import gc

from ssmd.cli import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_start_up_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 0  # what start-up allocated is never scanned again
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
