"""The one shape of every long-lived resource on both ends.

A resource (a server, a session table, a link, a listener, a supervisor) is
stopped with close() and awaited with wait_closed(); `async with` does both
on the way out. Subclasses override __aenter__ when entering starts work.
"""

from abc import ABC, abstractmethod
from typing import Self


class Resource(ABC):
    @abstractmethod
    def close(self) -> None:
        """Starts stopping; returns at once."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Returns once everything the resource started has ended."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
