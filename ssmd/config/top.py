"""Settings of the derived `top` records (ssmd.top): on/off, the minimum interval between two
tops of one market, and the depth window and size thresholds of the liquidity tiers."""

from __future__ import annotations

from pydantic import Field, model_validator

from ssmd.config.fields import Section, rule
from ssmd.fixedpoint import ONE_DOLLAR_E4, count_to_size


class TopSettings(Section):
    """`top:` in an environment. Off by default: tops are derived data, published only on ask.

    A market's top is published when its best YES bid or best NO bid (price or size) changed,
    at most once per `min_interval_ms` (0: every change). Liquidity counts the resting size
    within `depth_window_e4` (1/10,000 $, inclusive) of each ask: a price window rather than a
    number of ticks, because tick sizes differ by market and price band (PROTOCOL.md §7.1.5).
    Tiers: none (nothing rests), thin, moderate (>= moderate_min_contracts), deep
    (>= deep_min_contracts).
    """

    enabled: bool = False
    min_interval_ms: int = Field(default=250, ge=0)
    depth_window_e4: int = Field(default=200, ge=0, le=ONE_DOLLAR_E4)  # $0.02
    moderate_min_contracts: int = Field(default=100, ge=1)
    deep_min_contracts: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _deep_above_moderate(self) -> TopSettings:
        if self.deep_min_contracts <= self.moderate_min_contracts:
            raise rule(
                f"must be more than moderate_min_contracts ({self.moderate_min_contracts})",
                field="deep_min_contracts",
                fix=f"use a whole number > {self.moderate_min_contracts}, or lower"
                " moderate_min_contracts",
            )
        return self

    @property
    def min_interval_ns(self) -> int:
        return self.min_interval_ms * 1_000_000

    @property
    def moderate_min_e2(self) -> int:
        return count_to_size(self.moderate_min_contracts)

    @property
    def deep_min_e2(self) -> int:
        return count_to_size(self.deep_min_contracts)
