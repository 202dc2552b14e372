"""Kalshi WebSocket v2 wire messages (PROTOCOL.md §4-§7): msgspec Structs and one decoder.

(Stub: the helper that owns this module replaces everything below the Channel enum.)
"""

from __future__ import annotations

import enum


class Channel(enum.Enum):
    """Market-data channels ssmd subscribes to (§7.0)."""

    ORDERBOOK_DELTA = "orderbook_delta"
    TICKER = "ticker"
    TRADE = "trade"
    MARKET_LIFECYCLE_V2 = "market_lifecycle_v2"
