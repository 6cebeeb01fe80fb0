"""The Link: everything needed to reach one agent (one rank of one run).

A Link owns one gRPC channel at a time and replaces it when it dies. Python
gRPC left alone can hang for many minutes on a path that silently dropped
(no RST), and its own reconnect backoff grows to two minutes; so the Link
pings the agent every couple of seconds and, on a miss, closes the channel
(every call on it ends at once) and dials a fresh one with its own backoff.
Shell and Forward streams ride on `channel()` and resume on the new one.

A call on a channel the Link closed ends in asyncio.CancelledError even though
the calling task was not cancelled (that is how grpc.aio cancels the calls of
a closed channel); `is_link_loss` tells the two apart.
"""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf.message import Message

from connector import config, tls
from connector.backoff import Backoff
from connector.config import RunConfig
from connector.dialer import Dialer, agent_answers, dialer_for
from connector.errors import FatalLinkError, LinkError, RemoteError, TetherError
from protos import agent_pb2 as pb
from protos.agent_pb2_grpc import AgentStub
from protos.resource import Resource
from protos.version import PROTOCOL_VERSION

CONNECT_TIMEOUT = 10.0
# How often a waiting link checks whether a path that was down is back.
REACHABILITY_PROBE_INTERVAL = 0.2
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Keepalive within what the agent's server permits (no GOAWAY too_many_pings).
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Channels with equal arguments share subchannels by default, so a fresh
    # channel could reuse the very TCP connection that was found dead.
    ("grpc.use_local_subchannel_pool", 1),
]

StateKind = Literal["connecting", "connected", "reconnecting"]
R = TypeVar("R", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LinkState:
    """What the link is doing, for a status line.

    `attempt` counts connection attempts in this episode; `retry_in` is the
    wait before the next one (0 while an attempt is under way); `error` is why
    the last one failed (or why the link dropped); `pinned` is set on the
    "connected" state that pinned a certificate for the first time (trust on
    first use).
    """

    kind: StateKind
    attempt: int = 0
    retry_in: float = 0.0
    error: str | None = None
    pinned: str | None = None


def is_link_loss(exc: BaseException) -> bool:
    """Whether `exc`, raised by a call on a Link's channel, means the channel
    went away (closed by the Link, or the transport failed) rather than the
    caller being cancelled or the agent refusing."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(exc, grpc.aio.UsageError)


def translate_rpc_error(exc: grpc.aio.AioRpcError, run_name: str) -> TetherError:
    """The connector error for a status the agent returned."""
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return FatalLinkError(
            f"the agent rejected the token (UNAUTHENTICATED): check --token-file for run {run_name}"
        )
    return RemoteError(exc.code().name, exc.details() or "")


class Link(Resource):
    """One agent, reachable: an async context manager with close()/wait_closed()."""

    def __init__(
        self,
        run: RunConfig,
        rank: int = 0,
        *,
        on_state: Callable[[LinkState], None] | None = None,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 3.0,
        dialer: Dialer | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.run = run
        self.rank = rank
        self.address = run.address_for(rank)
        if dialer is None:
            dialer = dialer_for(run, self.address)
        self._dialer = dialer
        self._on_state = on_state
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._backoff = backoff or Backoff()
        self.info: pb.InfoReply | None = None
        self._token: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._connecting: asyncio.Task[grpc.aio.Channel] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._probe: tuple[grpc.aio.Channel, asyncio.Task[None]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._was_connected = False
        self._closed = False

    # ---------------------------------------------------------------- public

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token (read from its file at each connect)."""
        if self._token is None:
            self._token = config.read_token(self.run.token_file)
        return (("authorization", f"Bearer {self._token}"),)

    async def channel(self) -> grpc.aio.Channel:
        """The live channel, connecting (and retrying, forever) when there is
        none. Raises FatalLinkError for what retrying cannot fix."""
        if self._closed:
            raise LinkError("the link is closed")
        try:
            probe = self._pending_probe()
            if probe is not None:
                await asyncio.shield(probe)
            if self._channel is not None:
                return self._channel
            task = self._connecting or self._start_connecting(self._first_kind(), 0.0, None)
            return await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            # The link's own task was cancelled by close(), not this caller.
            if self._closed and is_link_loss(exc):
                raise LinkError("the link was closed") from None
            raise

    def invalidate(self, channel: grpc.aio.Channel) -> None:
        """A caller saw a call on `channel` fail: probe the channel with a
        Ping, and replace it if the probe fails. Until the verdict, channel()
        waits for it instead of handing out a channel that may be dead."""
        if channel is not self._channel or self._closed:
            return
        if self._probe is None or self._probe[0] is not channel or self._probe[1].done():
            self._probe = (channel, self._spawn(self._probe_channel(channel)))

    async def is_lost(self, channel: grpc.aio.Channel) -> bool:
        """After a failed call on `channel`: whether the channel is gone (so
        resume on a new one) rather than healthy (so the failure was the
        agent's own answer). Probes it first, as invalidate() does."""
        self.invalidate(channel)
        probe = self._pending_probe()
        if probe is not None:
            await asyncio.shield(probe)
        return channel is not self._channel

    async def call(
        self,
        method: str,
        request: Message,
        reply_type: type[R],
        *,
        timeout: float = 30.0,
        idempotent: bool = True,
    ) -> R:
        """A unary Agent call by method name, errors translated. An idempotent
        call that loses the link is sent again once the link is back."""
        while True:
            channel = await self.channel()
            rpc = getattr(AgentStub(channel), method)
            try:
                reply = await rpc(request, metadata=self.metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if not is_link_loss(exc) or not await self.is_lost(channel):
                    raise translate_rpc_error(exc, self.run.name) from None
            except (asyncio.CancelledError, grpc.aio.UsageError) as exc:
                if not is_link_loss(exc):
                    raise
            else:
                if not isinstance(reply, reply_type):
                    raise TypeError(f"{method} returned {type(reply).__name__}")
                return reply
            if not idempotent:
                raise LinkError(f"the link dropped during {method}; it may or may not have run")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._channel is not None:
            self._close_channel(self._channel)
            self._channel = None
        self._dialer.close()

    async def wait_closed(self) -> None:
        while self._tasks or self._closing:
            await asyncio.gather(*self._tasks, *self._closing, return_exceptions=True)
        await self._dialer.wait_closed()

    # ---------------------------------------------------------------- connecting

    def _pending_probe(self) -> asyncio.Task[None] | None:
        """The probe of the current channel, while it runs."""
        if self._probe is None or self._probe[1].done() or self._probe[0] is not self._channel:
            return None
        return self._probe[1]

    def _first_kind(self) -> StateKind:
        return "reconnecting" if self._was_connected else "connecting"

    def _report(self, state: LinkState) -> None:
        if self._on_state is not None:
            self._on_state(state)

    def _spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_connecting(
        self, kind: StateKind, delay: float, error: str | None
    ) -> asyncio.Task[grpc.aio.Channel]:
        task = self._spawn(self._connect_until_up(kind, delay, error))
        task.add_done_callback(self._connect_done)
        self._connecting = task
        return task

    def _connect_done(self, task: asyncio.Task[grpc.aio.Channel]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # a fatal error nobody awaited is raised to the next caller

    async def _connect_until_up(
        self, kind: StateKind, delay: float, error: str | None
    ) -> grpc.aio.Channel:
        attempt = 0
        while True:
            if delay:
                self._report(LinkState(kind, attempt, delay, error))
                await self._wait_to_retry(delay)
            attempt += 1
            self._report(LinkState(kind, attempt, 0.0, error))
            try:
                channel, pinned = await self._connect_once()
            except LinkError as exc:
                error, delay = str(exc), self._backoff.next_delay()
                continue
            self._install(channel)
            self._report(LinkState("connected", attempt, pinned=pinned))
            return channel

    async def _wait_to_retry(self, delay: float) -> None:
        """Waits `delay` seconds, or less once a path that was down answers
        again: a link coming back resumes within a probe interval instead of
        after the rest of a backoff step. A path that answers from the start
        (the agent refused us for another reason) gets the full delay, so a
        failing agent is never hammered."""
        deadline = asyncio.get_running_loop().time() + delay
        if await agent_answers(self._dialer, tls_on=not self.run.insecure_loopback):
            await asyncio.sleep(delay)
            return
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(min(REACHABILITY_PROBE_INTERVAL, left))
            if await agent_answers(self._dialer, tls_on=not self.run.insecure_loopback):
                return

    async def _connect_once(self) -> tuple[grpc.aio.Channel, str | None]:
        """One attempt: dial, check the certificate, Info. Returns the channel
        and the fingerprint if this attempt pinned one."""
        address = await self._dialer.dial()
        self._token = config.read_token(self.run.token_file)
        if self.run.insecure_loopback:
            channel, new_pin = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), None
        else:
            der = await tls.fetch_certificate(address, CONNECT_TIMEOUT)
            new_pin = self._check_pin(tls.fingerprint(der))
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", tls.verified_name(der))]
            channel = grpc.aio.secure_channel(address, tls.pinned_credentials(der), options)
        try:
            self.info = await self._checked_info(channel)
        except BaseException:
            await channel.close(None)
            raise
        if new_pin is not None:
            self.run = config.pin_fingerprint(self.run.name, new_pin, self.rank)
        return channel, new_pin

    def _check_pin(self, seen: str) -> str | None:
        """None when `seen` matches the pin; `seen` when there is no pin yet."""
        pinned = self.run.fingerprint_for(self.rank)
        if pinned is None:
            return seen
        if pinned != seen:
            raise FatalLinkError(
                f"the certificate of run {self.run.name} rank {self.rank} at {self.address} "
                f"does not match its pin: pinned {pinned}, presented {seen}. If the agent's "
                f"certificate changed on purpose, run `tether runs add {self.run.name} ... "
                f"--fingerprint {seen}` or remove the pin with "
                f"`tether runs unpin {self.run.name} --rank {self.rank}`"
            )
        return None

    async def _checked_info(self, channel: grpc.aio.Channel) -> pb.InfoReply:
        try:
            info = await AgentStub(channel).Info(
                pb.InfoRequest(), metadata=self.metadata, timeout=CONNECT_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise FatalLinkError(f"{self.address} is not a tether agent") from None
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise translate_rpc_error(exc, self.run.name) from None
            raise LinkError(f"{self.address}: {exc.code().name}: {exc.details()}") from None
        if info.protocol_version != PROTOCOL_VERSION:
            newer = "tether here" if info.protocol_version > PROTOCOL_VERSION else "the agent"
            raise FatalLinkError(
                f"the agent speaks protocol {info.protocol_version}, this tether speaks "
                f"{PROTOCOL_VERSION}; upgrade {newer} so both speak the same version"
            )
        return info

    # ---------------------------------------------------------------- liveness

    def _install(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._was_connected = True
        self._backoff.connected()
        self._heartbeat = self._spawn(self._beat(channel))

    async def _beat(self, channel: grpc.aio.Channel) -> None:
        while True:
            await asyncio.sleep(self._interval)
            error = await self._ping(channel)
            if error is not None:
                self._drop(channel, error)
                return

    async def _ping(self, channel: grpc.aio.Channel) -> str | None:
        """None if the agent answered a Ping in time, else why not."""
        try:
            await AgentStub(channel).Ping(
                pb.PingRequest(), metadata=self.metadata, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"heartbeat failed: {exc.code().name}: {exc.details()}"
        except (asyncio.CancelledError, grpc.aio.UsageError) as exc:
            if not is_link_loss(exc):
                raise
            return "the channel was closed"
        return None

    async def _probe_channel(self, channel: grpc.aio.Channel) -> None:
        error = await self._ping(channel)
        if error is not None:
            self._drop(channel, error)

    def _drop(self, channel: grpc.aio.Channel, reason: str) -> None:
        """Closes a dead channel, failing every call on it, and reconnects."""
        if channel is not self._channel or self._closed:
            return
        self._channel = None
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            self._heartbeat.cancel()
        self._close_channel(channel)
        self._start_connecting("reconnecting", self._backoff.dropped(), reason)

    def _close_channel(self, channel: grpc.aio.Channel) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await channel.close(None)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
