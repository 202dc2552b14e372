"""Discovery settings: defaults, accepted shapes, and the message, field and fix of each rule
(`ssmd.config.fields.rule` errors, which loading.py turns into ConfigError)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ssmd.config.fields import RULE_TYPE
from ssmd.config.selection import RestRateSettings, SelectionSettings, ShardSettings
from ssmd.selection import StatusFilter


def rule_error(model: type[BaseModel], data: dict[str, Any]) -> tuple[str, str, str]:
    """(field, message, fix) of the one rule a section breaks; field is dotted and relative."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    errors = caught.value.errors(include_url=False)
    assert len(errors) == 1, errors
    error = errors[0]
    assert error["type"] == RULE_TYPE, error
    ctx = error.get("ctx") or {}
    field = ".".join(str(part) for part in (*error["loc"], ctx.get("field", "")) if part != "")
    return field, error["msg"], str(ctx.get("fix", ""))


def test_selection_defaults() -> None:
    select = SelectionSettings()
    assert select.series == select.events == select.categories == select.tags == ()
    assert select.status == (StatusFilter.OPEN,)
    assert select.closing_within_h is None
    assert select.exclude_multivariate is True
    assert select.max_markets is None
    assert select.refresh_interval_s == 300.0


def test_selection_accepts_yaml_shapes() -> None:
    select = SelectionSettings.model_validate(
        {
            "series": ["KXBTC*", "KXFED", "KX?TH", "KX[AB]C"],
            "events": "KXBTCD-26AUG2017",  # one scalar is a one-item list
            "categories": ["Crypto", "Science and Technology"],
            "tags": ["Bitcoin", "Interest rates"],
            "status": "closed",
            "closing_within_h": 6,
            "max_markets": 500,
        }
    )
    assert select.events == ("KXBTCD-26AUG2017",)
    assert select.status == (StatusFilter.CLOSED,)
    assert select.tags == ("Bitcoin", "Interest rates")


@pytest.mark.parametrize(
    ("data", "field", "message", "fix"),
    [
        (
            {"events": ["KXBTCD-*"]},
            "events.0",
            "'KXBTCD-*': globs are not supported for events",
            "put a glob on the series instead (series: [KXBTC*])",
        ),
        (
            {"events": ["KX BTC"]},
            "events.0",
            "'KX BTC' is not an event ticker",
            "e.g. KXBTCD-26AUG2017",
        ),
        (
            {"series": ["KXBTC", "KX BTC"]},
            "series.1",
            "'KX BTC' is not a series ticker or glob",
            "a glob such as KXBTC*",
        ),
        (
            {"series": ["KXBTC*", "KXFED", "KXBTC*"]},
            "series.2",
            "listed twice",
            "remove the duplicate list entry",
        ),
        (
            {"tags": ["Bitcoin,Ethereum"]},
            "tags.0",
            "'Bitcoin,Ethereum' holds a comma",
            "one tag per list entry",
        ),
        ({"status": []}, "status", "no status listed", "unopened, open, paused, closed, settled"),
        ({"status": ["open", "open"]}, "status.1", "listed twice", "remove the duplicate"),
    ],
)
def test_selection_rules(data: dict[str, Any], field: str, message: str, fix: str) -> None:
    got_field, got_message, got_fix = rule_error(SelectionSettings, data)
    assert (got_field, got_message) == (field, message)
    assert fix in got_fix


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        ({"status": ["active"]}, ("status", 0), "enum"),  # an object status, not a filter
        ({"closing_within_h": 0}, ("closing_within_h",), "greater_than"),
        ({"max_markets": 0}, ("max_markets",), "greater_than_equal"),
        ({"refresh_interval_s": -1}, ("refresh_interval_s",), "greater_than"),
        ({"series": [""]}, ("series", 0), "string_too_short"),
        ({"market": ["X"]}, ("market",), "extra_forbidden"),
    ],
)
def test_selection_types_and_ranges(data: dict[str, Any], loc: tuple[Any, ...], kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SelectionSettings.model_validate(data)
    error = caught.value.errors()[0]
    assert (error["loc"], error["type"]) == (loc, kind)


def test_shard_index_must_be_below_count() -> None:
    assert ShardSettings(index=2, count=3).index == 2
    field, message, fix = rule_error(ShardSettings, {"index": 3, "count": 3})
    assert field == "index"
    assert message == "index 3 is not below count 3"
    assert fix == "shards count from 0: use an index in 0..2, or raise count"


def test_shard_needs_both_numbers_in_range() -> None:
    with pytest.raises(ValidationError) as caught:
        ShardSettings.model_validate({"index": -1, "count": 0})
    kinds = {(e["loc"], e["type"]) for e in caught.value.errors()}
    assert kinds == {(("index",), "greater_than_equal"), (("count",), "greater_than_equal")}


def test_rest_rate_defaults_are_the_basic_read_tier() -> None:
    rate = RestRateSettings()
    assert (rate.tokens_per_s, rate.burst_s, rate.request_cost) == (200.0, 2.0, 10.0)
    assert rate.capacity == 400.0
    assert rate.max_retries == 5


def test_rest_rate_bucket_must_hold_one_request() -> None:
    field, message, fix = rule_error(
        RestRateSettings, {"tokens_per_s": 4, "burst_s": 2, "request_cost": 10}
    )
    assert field == "burst_s"
    assert message == "the bucket holds 8 tokens, less than one request (10)"
    assert "raise tokens_per_s or burst_s" in fix
    assert "GET /account/limits" in fix


def test_rest_rate_backoff_cap_not_below_base() -> None:
    field, message, fix = rule_error(RestRateSettings, {"backoff_base_s": 2, "backoff_cap_s": 1})
    assert (field, message) == ("backoff_cap_s", "is below backoff_base_s")
    assert fix == "use a number >= backoff_base_s (2)"


def test_settings_are_frozen() -> None:
    select = SelectionSettings()
    with pytest.raises(ValidationError):
        select.max_markets = 3  # type: ignore[misc]
