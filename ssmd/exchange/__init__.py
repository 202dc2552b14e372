"""The local Kalshi WS v2 exchange simulator (`ssmd exchange`, PROTOCOL.md §10).

market: seeded markets and their streams; catalog/catalog_spec: series, events and markets of
the REST discovery surface (§9.1-§9.3, pure); churn: markets created, opened, closed and settled
over time with their lifecycle frames (§7.5, pure); protocol: one connection's commands and
frames (pure); faults/schedule: misbehaviour and seeded random fault schedules (pure); rest: the
trade history and REST query parsing (§9, pure); rest_catalog: the REST routes and their 429s;
outbound: one connection's outbox and sender; server: the asyncio/websockets driver;
replay_server: a recording served as an exchange; cli: the command line.
"""
