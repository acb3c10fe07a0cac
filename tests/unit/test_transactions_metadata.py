"""The list of events committed past a partition's offset, as the offset commit's metadata."""

from __future__ import annotations

import random

import pytest

from service.kafka.transactions import DONE_PREFIX, decode_done, encode_done


@pytest.mark.parametrize(
    "done",
    [
        set(),
        {100},
        {101, 102, 103},
        {100, 101, 105, 106, 107, 200},
        set(range(100, 25_100)),
    ],
)
def test_the_offsets_come_back_as_they_went(done: set[int]) -> None:
    metadata = encode_done(100, done)
    assert decode_done(100, metadata) == done


def test_offsets_before_the_base_are_left_out_and_runs_stay_short() -> None:
    assert decode_done(100, encode_done(100, {98, 99, 100, 102})) == {100, 102}
    # One held-up event and everything after it finished: one range, whatever its length.
    assert len(encode_done(1000, range(1001, 26_000))) < 40


def test_random_holes_round_trip() -> None:
    rng = random.Random(7)
    done = {offset for offset in range(5000, 7000) if rng.random() < 0.7}
    assert decode_done(5000, encode_done(5000, done)) == done


@pytest.mark.parametrize("metadata", ["", "something else", f"{DONE_PREFIX}zz.1", f"{DONE_PREFIX}1"])
def test_metadata_of_another_kind_or_unreadable_lists_nothing(metadata: str) -> None:
    assert decode_done(100, metadata) == set()
