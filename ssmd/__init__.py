"""ssmd: a streaming market-data connector for the Kalshi WebSocket API (v2).

Frames come in, are decoded and normalized into venue-neutral records, and go out
through a pluggable transport. See README.md for the record schema and operations.
"""

__version__ = "0.1.0"
