"""The local Kalshi WS v2 exchange simulator (`ssmd exchange`, PROTOCOL.md §10).

market: seeded markets and events; protocol: one connection's commands and frames (pure);
server: the asyncio/websockets driver; cli: the command line.
"""
