"""The tether daemon: background forwards that outlive the CLI that asked.

It keeps one Link per (run, rank) and one Forwarder per SPEC, serves the
Daemon control service on the user's private unix socket, and writes the
list of forwards to the state directory after every change, so that a
restarted daemon puts them all back.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from connector import config
from connector.daemon_client import log_path, socket_path, state_path
from connector.errors import TetherError
from connector.forwarder import Forwarder, parse_spec
from connector.link import Link, LinkState
from protos import daemon_pb2 as pb
from protos import daemon_pb2_grpc
from protos.resource import Resource

log = logging.getLogger("tether.daemon")


@dataclass(frozen=True, slots=True, order=True)
class ForwardKey:
    run: str
    rank: int
    spec: str


class LinkEntry:
    """A Link the daemon keeps up on its own, and what it last reported."""

    def __init__(self, run: config.RunConfig, rank: int) -> None:
        self.state = "connecting"
        self.error = ""
        self.last_contact = 0.0
        self.link = Link(run, rank, on_state=self._on_state)
        self._keeper = asyncio.get_running_loop().create_task(self._connect())

    def _on_state(self, state: LinkState) -> None:
        self.state = state.kind
        self.error = state.error or ""
        if state.kind == "connected":
            self.last_contact = time.time()

    async def _connect(self) -> None:
        """Connects at once, so `forward list` shows the link's real state."""
        try:
            await self.link.channel()
        except TetherError as exc:  # fatal: a wrong token, a changed certificate
            self.state, self.error = "failed", str(exc)

    def close(self) -> None:
        self._keeper.cancel()
        self.link.close()


class ForwardDaemon(Resource):
    """Every background forward of this user; an async context manager."""

    def __init__(self, state_file: Path) -> None:
        self._state_file = state_file
        self._links: dict[tuple[str, int], LinkEntry] = {}
        self._forwards: dict[ForwardKey, Forwarder] = {}
        self._failed: dict[ForwardKey, str] = {}
        self.stopped = asyncio.Event()

    async def __aenter__(self) -> "ForwardDaemon":
        await self.restore()
        return self

    def _link(self, run_name: str, rank: int) -> LinkEntry:
        key = (run_name, rank)
        if key not in self._links:
            run = config.get_run(run_name)
            run.address_for(rank)  # a clear error for a rank the run does not have
            self._links[key] = LinkEntry(run, rank)
        return self._links[key]

    async def add(self, run_name: str, rank: int, specs: list[str]) -> list[ForwardKey]:
        parsed = [parse_spec(text) for text in specs]  # every SPEC checked before any starts
        entry = self._link(run_name, rank)
        keys = []
        try:
            for spec in parsed:
                key = ForwardKey(run_name, rank, spec.text)
                if key not in self._forwards:
                    forwarder = Forwarder(entry.link, spec)
                    await forwarder.start()
                    self._forwards[key] = forwarder
                    self._failed.pop(key, None)
                    log.info("forwarding %s rank %d: %s", run_name, rank, spec.text)
                keys.append(key)
        finally:
            if not self._uses((run_name, rank)):
                self._links.pop((run_name, rank)).close()
            self.save()
        return keys

    async def stop(self, run_name: str, spec: str) -> int:
        doomed = [k for k in self._forwards if k.run == run_name and spec in ("", k.spec)]
        doomed_failed = [k for k in self._failed if k.run == run_name and spec in ("", k.spec)]
        for key in doomed:
            forwarder = self._forwards.pop(key)
            forwarder.close()
            await forwarder.wait_closed()
        for key in doomed_failed:
            del self._failed[key]
        for link_key in [k for k in self._links if not self._uses(k)]:
            self._links.pop(link_key).close()
        self.save()
        return len(doomed) + len(doomed_failed)

    def _uses(self, link_key: tuple[str, int]) -> bool:
        return any((k.run, k.rank) == link_key for k in self._forwards)

    def entries(self) -> list[pb.ForwardEntry]:
        out = []
        for key in sorted([*self._forwards, *self._failed]):
            entry = pb.ForwardEntry(run=key.run, rank=key.rank, spec=key.spec)
            forwarder = self._forwards.get(key)
            if forwarder is None:
                entry.link_state, entry.error = "failed", self._failed[key]
                out.append(entry)
                continue
            link = self._links[(key.run, key.rank)]
            status = forwarder.status()
            entry.local_port = forwarder.port
            entry.link_state = link.state
            entry.active_connections = status.active
            entry.total_connections = status.total
            entry.bytes_out, entry.bytes_in = status.bytes_out, status.bytes_in
            entry.last_contact_unix_ms = int(link.last_contact * 1000)
            entry.error = link.error if link.state != "connected" else status.last_error or ""
            out.append(entry)
        return out

    def save(self) -> None:
        keys = sorted([*self._forwards, *self._failed])
        data = [{"run": k.run, "rank": k.rank, "spec": k.spec} for k in keys]
        tmp = self._state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        tmp.replace(self._state_file)

    async def restore(self) -> None:
        """Puts back the forwards of the last daemon; one that cannot start
        (its port is taken now, its run was removed) is listed as failed."""
        try:
            saved: list[dict[str, Any]] = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_file, exc)
            return
        for item in saved:
            key = ForwardKey(str(item["run"]), int(item["rank"]), str(item["spec"]))
            try:
                await self.add(key.run, key.rank, [key.spec])
            except TetherError as exc:
                self._failed[key] = str(exc)
                log.warning("could not restore %s: %s", key, exc)

    def close(self) -> None:
        for forwarder in self._forwards.values():
            forwarder.close()
        for entry in self._links.values():
            entry.close()
        self.stopped.set()

    async def wait_closed(self) -> None:
        for forwarder in self._forwards.values():
            await forwarder.wait_closed()
        for entry in self._links.values():
            await entry.link.wait_closed()


class DaemonService(daemon_pb2_grpc.DaemonServicer):
    """Translates the control protocol to ForwardDaemon calls; TetherError
    becomes FAILED_PRECONDITION with the same words the CLI would print."""

    def __init__(self, daemon: ForwardDaemon) -> None:
        self._daemon = daemon

    async def AddForwards(
        self, request: pb.AddForwardsRequest, context: Any
    ) -> pb.AddForwardsReply:
        try:
            keys = await self._daemon.add(request.run, request.rank, list(request.specs))
        except TetherError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        wanted = {(k.run, k.rank, k.spec) for k in keys}
        entries = [e for e in self._daemon.entries() if (e.run, e.rank, e.spec) in wanted]
        return pb.AddForwardsReply(forwards=entries)

    async def StopForwards(
        self, request: pb.StopForwardsRequest, context: Any
    ) -> pb.StopForwardsReply:
        return pb.StopForwardsReply(stopped=await self._daemon.stop(request.run, request.spec))

    async def ListForwards(
        self, request: pb.ListForwardsRequest, context: Any
    ) -> pb.ListForwardsReply:
        return pb.ListForwardsReply(
            forwards=self._daemon.entries(), pid=os.getpid(), log_path=str(log_path())
        )

    async def Shutdown(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownReply:
        """Replies once every listener is closed, so `daemon stop` means stopped."""
        self._daemon.close()
        await self._daemon.wait_closed()
        return pb.ShutdownReply()


async def serve() -> None:
    """Runs the daemon until Shutdown, SIGTERM or SIGINT."""
    path = socket_path()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a daemon that died
    async with ForwardDaemon(state_path()) as daemon:
        server = grpc.aio.server()
        daemon_pb2_grpc.add_DaemonServicer_to_server(DaemonService(daemon), server)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix://{path}")
            await server.start()
        finally:
            os.umask(old_umask)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.close)
        log.info("tether daemon %d listening on %s", os.getpid(), path)
        try:
            await daemon.stopped.wait()
        finally:
            await server.stop(0.5)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
