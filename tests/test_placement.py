"""Markets over connections (ssmd.placement), with plain calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssmd.placement import Moves, Placement


def tickers(count: int, prefix: str = "M") -> list[str]:
    return [f"{prefix}{n:05d}" for n in range(count)]


def test_one_connection_until_the_cap() -> None:
    placement = Placement(cap=3)
    moves = placement.place(["A", "B", "C"])
    assert moves == Moves(added={0: ("A", "B", "C")})
    assert placement.connection_count == 1


def test_markets_beyond_the_cap_spread_evenly_over_new_connections() -> None:
    placement = Placement(cap=200)
    moves = placement.place(tickers(450))
    assert placement.connection_count == 3
    assert placement.load() == [150, 150, 150]
    assert sorted(m for ms in moves.added.values() for m in ms) == tickers(450)
    assert all(placement.connection_of(m) == i for i, ms in moves.added.items() for m in ms)


def test_new_markets_go_to_the_least_loaded_connection() -> None:
    placement = Placement(cap=4)
    placement.place(tickers(6))  # 3 + 3
    placement.remove(["M00000", "M00002"])  # connection 0 now holds 1
    assert placement.load() == [1, 3]
    moves = placement.place(["X", "Y"])
    assert moves.added == {0: ("X", "Y")}
    assert placement.load() == [3, 3]


def test_placing_a_known_market_again_changes_nothing() -> None:
    placement = Placement(cap=2)
    placement.place(["A"])
    assert placement.place(["A", "A"]).empty
    assert len(placement) == 1


def test_remove_reports_per_connection_and_ignores_strangers() -> None:
    placement = Placement(cap=2)
    placement.place(["A", "B", "C", "D"])
    moves = placement.remove(["A", "D", "nope"])
    assert moves.removed == {0: ("A",), 1: ("D",)}
    assert "A" not in placement
    assert placement.connection_of("B") == 1  # A, C on 0 and B, D on 1: alternating


def test_refused_additions_lower_the_cap_to_what_the_exchange_accepted() -> None:
    placement = Placement(cap=5)
    placement.place(tickers(5))
    moves = placement.refused(0, ["M00003", "M00004"])
    assert placement.cap == 3
    assert moves.added == {1: ("M00003", "M00004")}
    assert placement.markets_of(0) == ("M00000", "M00001", "M00002")
    assert placement.place(["N"]).added == {1: ("N",)}  # connection 0 is full at 3


def test_a_whole_subscribe_refused_halves_the_cap_and_places_again() -> None:
    placement = Placement(cap=50)
    placement.place(tickers(100))  # 50 + 50
    first = placement.markets_of(0)
    moves = placement.refused(0, first)
    assert placement.cap == 25
    # Connection 1 holds 50 (refused or not, that is for its own answer to say); the 50
    # refused go to new connections, not back to 0: its other channels' answers are pending.
    assert placement.load() == [0, 50, 25, 25]
    assert sorted(m for ms in moves.added.values() for m in ms) == sorted(first)
    assert placement.refused(0, ["not-there"]).empty


def test_max_connections_leaves_the_rest_unplaced() -> None:
    placement = Placement(cap=2, max_connections=2)
    moves = placement.place(tickers(5))
    assert moves.unplaced == ("M00004",)
    assert "M00004" not in placement
    assert placement.load() == [2, 2]


@pytest.mark.parametrize(("cap", "most"), [(0, 1), (1, 0)])
def test_bad_limits_are_refused(cap: int, most: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Placement(cap=cap, max_connections=most)


@given(
    st.lists(
        st.tuples(st.booleans(), st.lists(st.sampled_from(tickers(40)), max_size=15)),
        max_size=30,
    ),
    st.integers(1, 7),
)
def test_every_market_is_on_exactly_one_connection_within_its_cap(
    steps: list[tuple[bool, list[str]]], cap: int
) -> None:
    placement = Placement(cap=cap)
    wanted: set[str] = set()
    for adding, markets in steps:
        if adding:
            placement.place(markets)
            wanted.update(markets)
        else:
            placement.remove(markets)
            wanted.difference_update(markets)
        held = [m for i in range(placement.connection_count) for m in placement.markets_of(i)]
        assert sorted(held) == sorted(wanted)
        assert all(load <= cap for load in placement.load())
