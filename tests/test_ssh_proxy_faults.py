"""ssh through `tether proxy` while the link to the agent is cut: the
transfer completes with identical bytes, carried by the resumable Forward."""

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from connector import config
from connector.config import RunConfig
from tests.faultproxy import FaultProxy, ProxyStats
from tests.test_ssh_config import agent_run, run_home

__all__ = ["agent_run", "run_home"]
pytestmark = pytest.mark.timeout(90)


async def run_command(*argv: str) -> int:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
    return await proc.wait()


def test_scp_survives_link_cuts(run_home: Path, agent_run: RunConfig) -> None:
    source = run_home / "payload.bin"
    source.write_bytes(os.urandom(16 << 20))
    there = run_home / "copied.bin"
    ssh_config = run_home / "ssh" / "config"

    def carried(at: int) -> Callable[[ProxyStats], bool]:
        return lambda stats: stats.bytes_up >= at

    async def main() -> None:
        host, port = agent_run.address.rsplit(":", 1)
        async with FaultProxy(host, int(port)) as proxy:
            behind = dataclasses.replace(agent_run, name="cut", address=f"127.0.0.1:{proxy.port}")
            config.add_run(behind)
            assert await run_command("tether", "ssh-config", "cut", "--file", str(ssh_config)) == 0
            scp = ["scp", "-F", str(ssh_config), "-o", "BatchMode=yes"]
            copy = asyncio.ensure_future(run_command(*scp, str(source), f"tether-cut:{there}"))
            for threshold in (4 << 20, 10 << 20):
                carrying = asyncio.ensure_future(proxy.wait_until(carried(threshold)))
                await asyncio.wait([carrying, copy], return_when=asyncio.FIRST_COMPLETED)
                if not carrying.done():  # the copy ended before: no more cuts
                    carrying.cancel()
                    break
                proxy.cut()
            assert await copy == 0
            assert proxy.stats.cuts >= 2

    asyncio.run(main())
    assert there.read_bytes() == source.read_bytes()
