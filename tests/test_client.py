"""The websockets client driver on its own, against scripted servers on 127.0.0.1: a refused
handshake, a fragmented message, a message over the limit (1009), an exchange that never pongs,
and backpressure from a full sink (reading pauses; once drained, nothing is lost or reordered).
The fragment, limit and backpressure tests also run the picows driver (the shared FramePump).
The proxy environment: a CONNECT proxy in front of the simulator (and of a wss:// server),
NO_PROXY, a 407, SOCKS, an invalid proxy URL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from ssmd.auth import Credentials
from ssmd.client import KalshiClient
from ssmd.client_events import MAX_FRAME_BYTES
from ssmd.client_picows import RECEIVE_BUFFER_BYTES, PicowsKalshiClient
from ssmd.errors import ConfigError, ExchangeUnavailable, HandshakeRejected
from ssmd.exchange.server import ExchangeSimulator
from ssmd.messages import Channel
from ssmd.records import BookDelta, BookSnapshot, Record, Status, StatusEvent
from ssmd.session import KalshiSession
from tests.conftest import drained, set_proxy_environment, wait_until

KEY_ID = "client-test-key"
MARKET = "KXGOLDH-26AUG2711-T4615.99"
ClientClass = type[KalshiClient] | type[PicowsKalshiClient]
BOTH_CLIENTS = pytest.mark.parametrize("client_class", [KalshiClient, PicowsKalshiClient])


# Every name urllib's getproxies() may read for a ws:// or wss:// URL, in both cases.
def subscribed() -> str:
    return json.dumps(
        {"type": "subscribed", "id": 1, "msg": {"channel": "orderbook_delta", "sid": 1}}
    )


def snapshot() -> str:
    msg = {
        "market_ticker": MARKET,
        "yes_dollars_fp": [["0.0100", "1410.00"]],
        "no_dollars_fp": [["0.0100", "100.00"], ["0.0200", "2500.00"]],
    }
    return json.dumps({"type": "orderbook_snapshot", "sid": 1, "seq": 1, "msg": msg})


def delta(seq: int) -> str:
    msg = {
        "market_ticker": MARKET,
        "price_dollars": f"0.{seq % 90 + 5:02d}00",
        "delta_fp": "1.00",
        "side": "yes",
        "ts": "2026-08-27T13:56:23.996443Z",
    }
    return json.dumps({"type": "orderbook_delta", "sid": 1, "seq": seq, "msg": msg})


def new_session() -> KalshiSession:
    return KalshiSession(
        connection_id="t/1",
        channels=[Channel.ORDERBOOK_DELTA],
        markets=[MARKET],
        use_yes_price=True,
    )


def new_client(
    client_class: ClientClass,
    url: str,
    key: rsa.RSAPrivateKey,
    sink: asyncio.Queue[Record | None],
    ping_interval_s: float | None = 10.0,
) -> KalshiClient | PicowsKalshiClient:
    return client_class(
        url=url,
        credentials=Credentials(KEY_ID, key),
        session=new_session(),
        sink=sink,
        ping_interval_s=ping_interval_s,
    )


async def run_until_frames(client: KalshiClient | PicowsKalshiClient, frames: int) -> None:
    """Run the client until its session has received `frames` frames, then stop it cleanly."""
    stop = asyncio.Event()
    run = asyncio.create_task(client.run(stop))
    await wait_until(lambda: client.session.stats.frames_received == frames, 10, f"{frames} frames")
    stop.set()
    await asyncio.wait_for(run, 10)


def untimed(records: list[Record]) -> list[Record]:
    return [msgspec.structs.replace(r, receive_ts_ns=0) for r in records]


@contextlib.asynccontextmanager
async def scripted(
    handler: Callable[[ServerConnection], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """A websockets server running `handler` once the client's subscribe command came."""

    async def serve_one(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe command
        await ws.send(subscribed())
        await handler(ws)

    async with serve(serve_one, "127.0.0.1", 0, compression=None, ssl=tls) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "ws" if tls is None else "wss"
        yield f"{scheme}://127.0.0.1:{port}/trade-api/ws/v2"


async def test_a_refused_handshake_is_handshake_rejected_with_status_and_body(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    body = b'{"error":"invalid signature"}'
    requests: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
        client = new_client(KalshiClient, url, rsa_key, asyncio.Queue())
        with pytest.raises(HandshakeRejected) as info:
            await client.run(asyncio.Event())
    assert info.value.status_code == 401
    assert info.value.body == body.decode()
    assert info.value.url == url
    assert not client.connected.is_set()
    # The request was signed (§2.3) and asked for no compression.
    request = requests[0].lower()
    assert f"kalshi-access-key: {KEY_ID}".encode() in request
    assert b"kalshi-access-signature: " in request
    assert b"sec-websocket-extensions" not in request


async def test_nothing_listening_is_exchange_unavailable(rsa_key: rsa.RSAPrivateKey) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = new_client(KalshiClient, f"ws://127.0.0.1:{port}/", rsa_key, asyncio.Queue())
    with pytest.raises(ExchangeUnavailable) as info:
        await client.run(asyncio.Event())
    assert info.value.reason.startswith("cannot connect")


@BOTH_CLIENTS
async def test_a_fragmented_message_is_reassembled(
    client_class: ClientClass, rsa_key: rsa.RSAPrivateKey
) -> None:
    second = delta(2)
    frames = [subscribed(), snapshot(), second, delta(3)]

    async def send(ws: ServerConnection) -> None:
        await ws.send(snapshot())
        thirds = len(second) // 3
        await ws.send([second[:thirds], second[thirds : 2 * thirds], second[2 * thirds :]])
        await ws.send(delta(3))
        await ws.wait_closed()

    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    async with scripted(send) as url:
        client = new_client(client_class, url, rsa_key, sink)
        await run_until_frames(client, 4)
    records = drained(sink)
    expected_session = new_session()
    expected = [expected_session.receive_frame(frame.encode(), 0) for frame in frames]
    data = [r for r in records if not isinstance(r, Status)]
    assert untimed(data) == [r for r in expected if r is not None]
    assert [type(r) for r in data] == [BookSnapshot, BookDelta, BookDelta]
    assert client.session.stats.malformed_by_reason == {}


@BOTH_CLIENTS
async def test_a_message_over_the_limit_fails_the_connection_with_1009(
    client_class: ClientClass, rsa_key: rsa.RSAPrivateKey
) -> None:
    received: list[Close | None] = []
    chunk = "x" * (1024 * 1024)

    async def send_too_much(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client's close frame ends it
            await ws.send(chunk for _ in range(MAX_FRAME_BYTES // len(chunk) + 1))
        await ws.wait_closed()
        received.append(ws.protocol.close_rcvd)

    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    async with scripted(send_too_much) as url:
        client = new_client(client_class, url, rsa_key, sink)
        with pytest.raises(ExchangeUnavailable) as info:
            await asyncio.wait_for(client.run(asyncio.Event()), 20)
    assert received[0] is not None
    assert received[0].code == 1009
    assert "protocol error" in info.value.reason
    # websockets' words, or picows' (whose limit is per frame: the pump's is per message).
    assert "exceeds limit of 16777216" in info.value.reason or "too big" in info.value.reason
    statuses = [r for r in drained(sink) if isinstance(r, Status)]
    assert [s.event for s in statuses] == [
        StatusEvent.CONNECTED,
        StatusEvent.SUBSCRIBED,
        StatusEvent.DISCONNECTED,
    ]
    assert client.session.stats.frames_received == 1  # the subscribed frame only


async def test_an_exchange_that_never_pongs_is_a_keepalive_timeout(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """The server accepts and reads but answers nothing: no pong, no close frame back."""
    closes: list[Close] = []
    pings = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        protocol = ServerProtocol()
        while data := await reader.read(65536):
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Request):
                    protocol.send_response(protocol.accept(event))
                    for out in protocol.data_to_send():  # the handshake response only
                        writer.write(out)
                elif isinstance(event, Frame) and event.opcode is Opcode.PING:
                    pings += 1
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    closes.append(Close.parse(event.data))
                    writer.close()  # as the exchange's TCP close, without a close frame
                    return
            protocol.data_to_send()  # pongs are dropped: a silent exchange

    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
        client = new_client(KalshiClient, url, rsa_key, sink, ping_interval_s=0.2)
        with pytest.raises(ExchangeUnavailable) as info:
            await asyncio.wait_for(client.run(asyncio.Event()), 10)
    assert pings == 1
    assert closes == [Close(1011, "keepalive ping timeout")]
    assert info.value.reason == "connection closed: stale: no pong within 0.2 s"
    statuses = [r for r in drained(sink) if isinstance(r, Status)]
    assert [s.event for s in statuses] == [
        StatusEvent.CONNECTED,
        StatusEvent.STALE,
        StatusEvent.DISCONNECTED,
    ]
    assert statuses[1].reason == "stale: no pong within 0.2 s"


@BOTH_CLIENTS
async def test_a_full_sink_pauses_reading_and_nothing_is_lost(
    client_class: ClientClass, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Far more than the kernel's socket buffers hold: the server must wait for the client.
    count = 40_000
    sent = 0
    server_ws: list[ServerConnection] = []

    async def send_all(ws: ServerConnection) -> None:
        nonlocal sent
        server_ws.append(ws)
        await ws.send(snapshot())
        for seq in range(2, count + 2):
            await ws.send(delta(seq))
            sent += 1
        await ws.wait_closed()

    sink: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=1)
    async with scripted(send_all) as url:
        client = new_client(client_class, url, rsa_key, sink)
        stop = asyncio.Event()
        run = asyncio.create_task(client.run(stop))
        await wait_until(lambda: client.reading_paused, 10, "reading to pause")

        def server_blocked() -> bool:
            transport = server_ws[0].transport if server_ws else None
            return transport is not None and transport.get_write_buffer_size() > 0

        await wait_until(server_blocked, 10, "the exchange's writes to block")
        assert client.reading_paused
        assert sent < count
        assert client.session.stats.frames_received < 200  # the rest waits in TCP

        records: list[Record] = []

        async def drain() -> None:
            while (record := await sink.get()) is not None:
                records.append(record)

        drainer = asyncio.create_task(drain())
        frames = count + 2
        await wait_until(lambda: client.session.stats.frames_received == frames, 60, "all")
        stop.set()
        await asyncio.wait_for(run, 30)
        await sink.put(None)
        await drainer
    deltas = [r.seq for r in records if isinstance(r, BookDelta)]
    assert deltas == list(range(2, count + 2))
    assert sum(1 for r in records if isinstance(r, BookSnapshot)) == 1
    assert isinstance(records[-1], Status)
    assert records[-1].event is StatusEvent.DISCONNECTED
    assert records[-1].reason == "shutdown"


@dataclass
class ConnectProxy:
    """A CONNECT proxy on 127.0.0.1: answers `status`, and on 200 pipes bytes both ways."""

    status: int = 200
    port: int = 0
    targets: list[str] = field(default_factory=list)  # host:port of every CONNECT
    requests: list[bytes] = field(default_factory=list)  # their heads

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            assert method == "CONNECT"
            self.targets.append(target)
            if self.status != 200:
                writer.write(
                    f"HTTP/1.1 {self.status} No\r\nProxy-Authenticate: Basic\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                return
            host, port = target.rsplit(":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
            finally:
                upstream_writer.close()
        finally:
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@contextlib.asynccontextmanager
async def connect_proxy(status: int = 200) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(status)
    tunnels: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tunnels.add(task)
        await proxy.handle(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
        await server.wait_closed()


async def stream_from(sim: ExchangeSimulator, rsa_key: rsa.RSAPrivateKey) -> list[Record]:
    """Run the websockets client against `sim` until 50 frames came, then stop it."""
    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    session = KalshiSession(
        connection_id="t/1", channels=list(Channel), markets=sim.markets, use_yes_price=True
    )
    client = KalshiClient(
        url=sim.url, credentials=Credentials(KEY_ID, rsa_key), session=session, sink=sink
    )
    stop = asyncio.Event()
    run = asyncio.create_task(client.run(stop))
    await wait_until(lambda: session.stats.frames_received >= 50 or run.done(), 30, "frames")
    stop.set()
    await asyncio.wait_for(run, 30)
    return drained(sink)


def simulator(key: rsa.RSAPrivateKey) -> ExchangeSimulator:
    return ExchangeSimulator(
        public_keys={KEY_ID: key.public_key()}, market_count=2, rate_hz=500.0, seed=3
    )


async def test_an_http_proxy_in_the_environment_carries_the_connection(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect_proxy() as proxy, simulator(rsa_key) as sim:
        set_proxy_environment(monkeypatch, HTTP_PROXY=f"http://127.0.0.1:{proxy.port}")
        with structlog.testing.capture_logs() as logs:
            records = await stream_from(sim, rsa_key)
    exchange = sim.url.split("/")[2]  # 127.0.0.1:port
    assert proxy.targets == [exchange]
    assert f"Host: {exchange}".encode() in proxy.requests[0]
    assert sim.accepted_connections == 1
    statuses = [r.event for r in records if isinstance(r, Status)]
    assert statuses[0] is StatusEvent.CONNECTED
    assert statuses[-1] is StatusEvent.DISCONNECTED
    assert sum(1 for r in records if isinstance(r, BookSnapshot)) == len(sim.markets)
    proxy_logs = [e for e in logs if e["event"] == "client.proxy"]
    assert proxy_logs[0]["proxy"] == f"http://127.0.0.1:{proxy.port}"
    assert proxy_logs[0]["variable"] == "HTTP_PROXY"


def tls_for_localhost(key: rsa.RSAPrivateKey, tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for 127.0.0.1, and its PEM file (the
    client trusts it through SSL_CERT_FILE, as it would a corporate CA)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


async def test_wss_through_an_http_proxy_is_tls_to_the_exchange_inside_the_tunnel(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server_tls, cert_file = tls_for_localhost(rsa_key, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))

    async def send(ws: ServerConnection) -> None:
        await ws.send(snapshot())
        await ws.wait_closed()

    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    async with connect_proxy() as proxy, scripted(send, server_tls) as url:
        # HTTP_PROXY is for ws:// only: this one must not be used.
        set_proxy_environment(
            monkeypatch,
            HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}",
            HTTP_PROXY="http://127.0.0.1:9",
        )
        client = new_client(KalshiClient, url, rsa_key, sink)
        await run_until_frames(client, 2)
    assert url.startswith("wss://")
    assert proxy.targets == [url.split("/")[2]]
    assert [type(r) for r in drained(sink) if not isinstance(r, Status)] == [BookSnapshot]


async def test_no_proxy_covering_the_exchange_connects_directly(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect_proxy() as proxy, simulator(rsa_key) as sim:
        set_proxy_environment(
            monkeypatch,
            http_proxy=f"http://127.0.0.1:{proxy.port}",  # lower case, as getproxies() reads
            HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}",
            NO_PROXY="localhost,127.0.0.1",
        )
        records = await stream_from(sim, rsa_key)
    assert proxy.targets == []
    assert sim.accepted_connections == 1
    assert sum(1 for r in records if isinstance(r, BookSnapshot)) == len(sim.markets)


async def test_a_proxy_refusing_is_exchange_unavailable_with_its_status_not_the_password(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect_proxy(status=407) as proxy:
        set_proxy_environment(monkeypatch, HTTP_PROXY=f"http://user:secret@127.0.0.1:{proxy.port}")
        url = "ws://127.0.0.1:9/trade-api/ws/v2"  # the proxy answers before any connect
        client = new_client(KalshiClient, url, rsa_key, asyncio.Queue())
        with structlog.testing.capture_logs() as logs, pytest.raises(ExchangeUnavailable) as info:
            await client.run(asyncio.Event())
    assert proxy.targets == ["127.0.0.1:9"]
    # The credentials went to the proxy (Basic user:secret), and nowhere else.
    assert b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=" in proxy.requests[0]
    assert "407" in info.value.reason
    assert f"proxy http://127.0.0.1:{proxy.port}" in info.value.reason
    assert not client.connected.is_set()
    chain: list[BaseException] = [info.value]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(cause)
    assert all("secret" not in str(exc) for exc in chain)
    assert "secret" not in repr(logs)


async def test_a_socks_proxy_is_refused_naming_the_variable_not_the_password(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_proxy_environment(monkeypatch, https_proxy="socks5h://user:secret@127.0.0.1:1080")
    url = "wss://127.0.0.1:9/trade-api/ws/v2"
    client = new_client(KalshiClient, url, rsa_key, asyncio.Queue())
    with pytest.raises(ConfigError) as info:  # fatal: retrying cannot help
        await client.run(asyncio.Event())
    assert info.value.field == "https_proxy"
    assert "names a SOCKS proxy (socks5h://127.0.0.1:1080)" in info.value.message
    assert "NO_PROXY" in info.value.fix
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None


async def test_an_invalid_proxy_is_refused_without_echoing_it(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_proxy_environment(monkeypatch, HTTP_PROXY="http://user:secret@127.0.0.1:3128/path")
    client = new_client(KalshiClient, "ws://127.0.0.1:9/", rsa_key, asyncio.Queue())
    with pytest.raises(ConfigError) as info:  # fatal: retrying cannot help
        await client.run(asyncio.Event())
    assert (info.value.field, info.value.message) == (
        "HTTP_PROXY",
        "not a valid proxy URL: path is meaningless",
    )
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__  # the InvalidProxy's text holds the password


async def test_the_open_timeout_covers_a_proxy_that_never_answers(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        set_proxy_environment(monkeypatch, HTTP_PROXY=f"http://127.0.0.1:{port}")
        client = KalshiClient(
            url="ws://127.0.0.1:9/trade-api/ws/v2",
            credentials=Credentials(KEY_ID, rsa_key),
            session=new_session(),
            sink=asyncio.Queue(),
            open_timeout_s=0.2,
        )
        with pytest.raises(ExchangeUnavailable) as info:
            await asyncio.wait_for(client.run(asyncio.Event()), 10)
    assert connects[0].startswith(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n")
    assert info.value.reason == (
        f"cannot connect through proxy http://127.0.0.1:{port}: no answer within 0.2 s"
    )
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_picows_caps_its_socket_receive_buffer(rsa_key: rsa.RSAPrivateKey) -> None:
    # picows reads whatever the socket holds and grows its buffer to match; Linux lets a busy
    # socket's receive buffer grow to tcp_rmem's max (32 MiB here): the cap bounds one read.
    async def send_snapshot(ws: ServerConnection) -> None:
        await ws.send(snapshot())
        await ws.wait_closed()

    sink: asyncio.Queue[Record | None] = asyncio.Queue()
    async with scripted(send_snapshot) as url:
        client = new_client(PicowsKalshiClient, url, rsa_key, sink)
        stop = asyncio.Event()
        run = asyncio.create_task(client.run(stop))
        await wait_until(lambda: client.session.stats.frames_received == 2, 10, "ack, snapshot")
        assert client._listener is not None
        sock = client._listener.transport.underlying_transport.get_extra_info("socket")
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        stop.set()
        await asyncio.wait_for(run, 10)
    # Linux reports twice what was set (its bookkeeping share); without the cap, ~128 KiB.
    assert RECEIVE_BUFFER_BYTES <= size <= 2 * RECEIVE_BUFFER_BYTES
