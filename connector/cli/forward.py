"""`tether forward RUN SPEC [SPEC...]`: local ports reaching ports in the run.

In the foreground the command owns the listeners and shows one live status
line per forward (link state, connections, bytes, last contact) until ^C.
The listeners stay
open through link outages: a connection made while the link is down waits
for it a bounded time (connector/forward_client.py).
"""

import asyncio
import contextlib
import sys
import time
from typing import Annotated, TextIO

import typer

from connector import config
from connector.forwarder import Forwarder, ForwardSpec, ForwardStatus, parse_spec
from connector.link import Link, LinkState
from connector.terminal import escape_text
from protos.memory import tune_malloc

REFRESH_SECONDS = 1.0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _local(spec: ForwardSpec, port: int) -> str:
    bind = "localhost" if len(spec.binds) > 1 else spec.binds[0]
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


class ForwardView:
    """The status lines, redrawn in place on a terminal, printed on change
    otherwise. Every string from the far side goes through escape_text."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._link = "connecting"
        self._contact: float | None = None
        self._drawn = 0
        self._last: list[str] = []

    def link_state(self, state: LinkState) -> None:
        if state.kind == "connected":
            self._link = "connected"
        elif state.kind == "reconnecting":
            reason = f": {state.error}" if state.error else ""
            self._link = f"reconnecting (retry in {state.retry_in:.0f}s){reason}"
        else:
            self._link = "connecting"

    def _line(self, forwarder: Forwarder, status: ForwardStatus, now: float) -> str:
        if self._link == "connected":
            self._contact = now
        contact = "never" if self._contact is None else f"{now - self._contact:.0f}s ago"
        line = (
            f"{_local(forwarder.spec, forwarder.port)} -> {forwarder.spec.target}  {self._link}  "
            f"{status.active} open / {status.total} total  "
            f"{_size(status.bytes_out)} out, {_size(status.bytes_in)} in  last contact {contact}"
        )
        if status.last_error:
            line += f"  (last error: {status.last_error})"
        return escape_text(line)

    def render(self, forwarders: list[Forwarder]) -> None:
        now = time.monotonic()
        lines = [self._line(f, f.status(), now) for f in forwarders]
        if self._tty:
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self._stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self._drawn = len(lines)
        elif [line.split("  last contact")[0] for line in lines] != self._last:
            self._last = [line.split("  last contact")[0] for line in lines]
            self._stream.write("".join(f"{line}\n" for line in lines))
        with contextlib.suppress(OSError):
            self._stream.flush()


async def serve(
    run_name: str | None, specs: list[ForwardSpec], rank: int, view: ForwardView
) -> None:
    """Runs the forwards until cancelled (^C)."""
    run = config.get_run(run_name)
    async with contextlib.AsyncExitStack() as stack:
        link = await stack.enter_async_context(Link(run, rank, on_state=view.link_state))
        forwarders = [await stack.enter_async_context(Forwarder(link, spec)) for spec in specs]
        # The listeners are up; a link that can never work (a wrong token, a
        # certificate that does not match its pin) ends the command.
        first_contact = asyncio.ensure_future(link.channel())
        stack.callback(first_contact.cancel)
        while True:
            view.render(forwarders)
            if first_contact.done():
                await asyncio.sleep(REFRESH_SECONDS)
                continue
            await asyncio.wait([first_contact], timeout=REFRESH_SECONDS)
            if first_contact.done():
                first_contact.result()  # raises what the link cannot get past


def forward(
    run: Annotated[str, typer.Argument(help="The run.")],
    specs: Annotated[
        list[str],
        typer.Argument(
            help="PORT, LOCAL:REMOTE, LOCAL:HOST:REMOTE or BIND:LOCAL:HOST:REMOTE (as ssh -L)."
        ),
    ],
    rank: Annotated[int, typer.Option("--rank", "-r", min=0, help="Which node of the run.")] = 0,
    background: Annotated[
        bool,
        typer.Option(
            "--background", "-b", help="Hand the forwards to the daemon (started if needed)."
        ),
    ] = False,
) -> None:
    """Forward local ports to ports in the run; they survive link outages.

    `tether forward list` shows background forwards; `tether forward stop RUN
    [SPEC]` ends them.
    """
    parsed = [parse_spec(spec) for spec in specs]
    if background:
        from connector.cli.forwards import describe, start_in_background

        for entry in start_in_background(run, rank, [spec.text for spec in parsed]):
            typer.echo(describe(entry))
        return
    tune_malloc()
    asyncio.run(serve(run, parsed, rank, ForwardView(sys.stderr)))
