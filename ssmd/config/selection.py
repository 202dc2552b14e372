"""Settings of market discovery: which markets to select (`subscription.select`), this
process's shard (`subscription.shard`) and the REST rate budget (`exchange.rest_rate`,
PROTOCOL.md §9.6). Validation only; ssmd.selection and ssmd.discovery act on them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from ssmd.config.fields import Section, no_duplicates, rule
from ssmd.ratelimit import BASIC_READ_BURST_S, BASIC_READ_TOKENS_PER_S, DEFAULT_REQUEST_COST
from ssmd.selection import StatusFilter, is_glob

# Kalshi tickers: upper-case letters, digits, '-', '.', '_' (e.g. KXBTCD-26AUG2017-T73749.99).
_TICKER = re.compile(r"[A-Za-z0-9._-]+")
_SERIES_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]!-]+")

Name = Annotated[str, Field(min_length=1)]


def _as_list(value: object) -> object:
    """A single YAML scalar where a list is expected (`status: open`) is a one-item list."""
    return [value] if isinstance(value, str) else value


class SelectionSettings(Section):
    """Choose markets by series (globs allowed: KXBTC*), event, category and tag instead of
    listing tickers; `subscription.markets` are kept as well. No source = every market of the
    statuses. Re-resolved every `refresh_interval_s`."""

    series: tuple[Name, ...] = ()
    events: tuple[Name, ...] = ()
    categories: tuple[Name, ...] = ()
    tags: tuple[Name, ...] = ()
    status: tuple[StatusFilter, ...] = (StatusFilter.OPEN,)
    closing_within_h: float | None = Field(default=None, gt=0)
    exclude_multivariate: bool = True
    max_markets: int | None = Field(default=None, ge=1)
    refresh_interval_s: float = Field(default=300.0, gt=0)

    @field_validator("series", "events", "categories", "tags", "status", mode="before")
    @classmethod
    def _scalar_is_a_list(cls, value: object) -> object:
        return _as_list(value)

    @field_validator("series")
    @classmethod
    def _series_patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, value in enumerate(values):
            if _SERIES_PATTERN.fullmatch(value) is None:
                raise rule(
                    f"{value!r} is not a series ticker or glob",
                    field=str(index),
                    fix="use a series ticker such as KXBTCD, or a glob such as KXBTC* (letters,"
                    " digits, - . _ and the glob characters * ? [ ])",
                )
        return no_duplicates(values)

    @field_validator("events")
    @classmethod
    def _event_tickers(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, value in enumerate(values):
            if is_glob(value):
                raise rule(
                    f"{value!r}: globs are not supported for events",
                    field=str(index),
                    fix="list event tickers exactly (e.g. KXBTCD-26AUG2017), or put a glob"
                    " on the series instead (series: [KXBTC*])",
                )
            if _TICKER.fullmatch(value) is None:
                raise rule(
                    f"{value!r} is not an event ticker",
                    field=str(index),
                    fix="use the exchange's event ticker, e.g. KXBTCD-26AUG2017",
                )
        return no_duplicates(values)

    @field_validator("categories")
    @classmethod
    def _categories(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return no_duplicates(values)

    @field_validator("tags")
    @classmethod
    def _one_tag_each(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, value in enumerate(values):
            if "," in value:
                raise rule(
                    f"{value!r} holds a comma",
                    field=str(index),
                    fix="give one tag per list entry, e.g. tags: [Bitcoin, Ethereum]",
                )
        return no_duplicates(values)

    @field_validator("status")
    @classmethod
    def _some_status(cls, values: tuple[StatusFilter, ...]) -> tuple[StatusFilter, ...]:
        if not values:
            choices = ", ".join(s.value for s in StatusFilter)
            raise rule("no status listed", fix=f"list one or more of {choices}, e.g. [open]")
        return no_duplicates(values)


class ShardSettings(Section):
    """Run `count` processes with the same selection and `index` 0..count-1 each: every
    market goes to exactly one of them (ssmd.selection.shard_of)."""

    index: int = Field(ge=0)
    count: int = Field(ge=1)

    @model_validator(mode="after")
    def _index_below_count(self) -> ShardSettings:
        if self.index >= self.count:
            raise rule(
                f"index {self.index} is not below count {self.count}",
                field="index",
                fix=f"shards count from 0: use an index in 0..{self.count - 1}, or raise count",
            )
        return self


class RestRateSettings(Section):
    """The REST read budget (§9.6): a token bucket refilling `tokens_per_s` and holding
    `burst_s` seconds of it; each request costs `request_cost`. Defaults: the Basic tier.
    429s and 5xx are retried with full-jitter backoff up to `max_retries` times."""

    tokens_per_s: float = Field(default=BASIC_READ_TOKENS_PER_S, gt=0)
    burst_s: float = Field(default=BASIC_READ_BURST_S, gt=0)
    request_cost: float = Field(default=DEFAULT_REQUEST_COST, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_base_s: float = Field(default=0.25, gt=0)
    backoff_cap_s: float = Field(default=10.0, gt=0)

    @property
    def capacity(self) -> float:
        """The bucket size in tokens."""
        return self.tokens_per_s * self.burst_s

    @model_validator(mode="after")
    def _consistent(self) -> RestRateSettings:
        if self.capacity < self.request_cost:
            raise rule(
                f"the bucket holds {self.capacity:g} tokens, less than one request"
                f" ({self.request_cost:g})",
                field="burst_s",
                fix="raise tokens_per_s or burst_s (Basic tier: tokens_per_s 200, burst_s 2;"
                " GET /account/limits shows yours)",
            )
        if self.backoff_cap_s < self.backoff_base_s:
            raise rule(
                "is below backoff_base_s",
                field="backoff_cap_s",
                fix=f"use a number >= backoff_base_s ({self.backoff_base_s:g})",
            )
        return self
