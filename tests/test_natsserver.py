"""The managed nats-server: starts on a free port, serves JetStream, survives kill/restart."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from ssmd.natsserver import NatsServer, NatsServerError


async def test_jetstream_store_survives_kill_and_restart_on_the_same_port(
    nats_server: NatsServer,
) -> None:
    port = nats_server.port
    assert port > 0
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="T", subjects=["t.>"])
    ack = await js.publish("t.one", b"payload")
    assert (ack.stream, ack.seq) == ("T", 1)
    await nc.close()

    await nats_server.kill()
    assert not nats_server.running
    await nats_server.restart()
    assert nats_server.port == port

    nc = await nats.connect(nats_server.url)
    message = await nc.jetstream().get_msg("T", 1)
    assert message.data == b"payload"
    await nc.close()


async def test_a_second_server_on_a_taken_port_fails_with_its_log(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    clash = NatsServer(tmp_path / "clash", port=nats_server.port, ready_timeout_s=5)
    with pytest.raises(NatsServerError) as info:
        await clash.start()
    assert "nats-server" in str(info.value)
    assert info.value.log_path == clash.log_path
