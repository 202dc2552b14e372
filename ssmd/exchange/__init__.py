"""The local Kalshi WS v2 exchange simulator (`ssmd exchange`, PROTOCOL.md §10).

market: seeded markets and events; protocol: one connection's commands and frames (pure);
faults/schedule: misbehaviour and seeded random fault schedules (pure); rest: the trade history
(§9.5, pure); outbound: one connection's outbox and sender; server: the asyncio/websockets
driver; cli: the command line.
"""
