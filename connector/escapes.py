"""ssh-style escape sequences typed into `tether connect`.

The local terminal is in raw mode, so every key goes to the far side; the only
way to reach the connector itself (to leave a hung session, say) is an escape
typed at the start of a line, exactly as ssh does it: `~.` disconnects, `~?`
lists the escapes, `~~` sends one `~`. Anything else after the escape
character is sent as typed, both bytes, so a `~` in ordinary typing is never
swallowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_LINE_ENDS: Final = frozenset(b"\r\n")
_DISCONNECT: Final = ord(".")
_HELP: Final = ord("?")


@dataclass(frozen=True)
class Disconnect:
    """The person typed the disconnect escape: end the session from this side."""


@dataclass(frozen=True)
class LocalMessage:
    """Text for the local terminal only; it is never sent to the far side."""

    text: str


Action = bytes | Disconnect | LocalMessage
"""What `EscapeFilter.feed` yields: bytes to send, or a command for the connector."""


def parse_escape_char(spec: str) -> int | None:
    """Read an escape character the way ssh's `-e` does.

    One ASCII character, `^X` for a control character, or `none` to turn
    escapes off (for sessions that must pass every byte, such as a paste of
    binary data). Returns the byte, or None for `none`.
    """
    if spec == "none":
        return None
    if len(spec) == 1 and spec.isascii():
        return ord(spec)
    if len(spec) == 2 and spec[0] == "^" and spec[1].isascii():
        return ord(spec[1]) & 0x1F
    raise ValueError(
        f"bad escape character {spec!r}: give one ASCII character, "
        "^X for a control character, or 'none'"
    )


def describe_escape_char(byte: int) -> str:
    """Show an escape byte as a person would type it (`~`, or `^]` for controls)."""
    if byte < 0x20:
        return "^" + chr(byte + 0x40)
    if byte == 0x7F:
        return "^?"
    return chr(byte)


class EscapeFilter:
    """Turns the bytes typed locally into bytes to send and escape commands.

    State carries across `feed` calls, so an escape split over two reads
    (`~` in one, `.` in the next) works; the pending `~` is held back until
    the byte after it shows what it means.
    """

    def __init__(self, escape_char: str = "~") -> None:
        self._escape = parse_escape_char(escape_char)
        # The session starts at the beginning of a line, as in ssh.
        self._at_line_start = True
        self._pending = False
        self._disconnected = False

    @property
    def enabled(self) -> bool:
        """False when escapes were turned off with `none`."""
        return self._escape is not None

    def help_text(self) -> str:
        """The list of escapes, spelled with the configured escape character."""
        if self._escape is None:
            return "Escapes are disabled."
        e = describe_escape_char(self._escape)
        return (
            "Supported escape sequences:\n"
            f" {e}.  - disconnect\n"
            f" {e}?  - this message\n"
            f" {e}{e}  - send the escape character by typing it twice\n"
            "(Escapes are only recognized immediately after a newline.)"
        )

    def feed(self, data: bytes) -> list[Action]:
        """Split typed bytes into actions, in order.

        Adjacent bytes to send come out as one `bytes` action. After a
        `Disconnect` everything is dropped, the rest of `data` and every later
        feed: the session is ending, and nothing typed after `~.` may leak out.
        """
        if self._disconnected:
            return []
        if self._escape is None:
            return [data] if data else []
        if not self._pending and self._escape not in data:
            # The common case, and the one for large pastes: nothing to look at.
            if data:
                self._at_line_start = data[-1] in _LINE_ENDS
                return [data]
            return []
        return self._feed_bytewise(data, self._escape)

    def _feed_bytewise(self, data: bytes, escape: int) -> list[Action]:
        actions: list[Action] = []
        outgoing = bytearray()
        for byte in data:
            if self._pending:
                self._pending = False
                command = self._command(byte)
                if command is not None:
                    _flush(outgoing, actions)
                    actions.append(command)
                    if isinstance(command, Disconnect):
                        self._disconnected = True
                        return actions
                    # Like ssh, a command leaves us at the start of the line.
                    continue
                if byte != escape:
                    outgoing.append(escape)
            elif self._at_line_start and byte == escape:
                self._pending = True
                continue
            self._at_line_start = byte in _LINE_ENDS
            outgoing.append(byte)
        _flush(outgoing, actions)
        return actions

    def _command(self, byte: int) -> Disconnect | LocalMessage | None:
        if byte == _DISCONNECT:
            return Disconnect()
        if byte == _HELP:
            return LocalMessage(self.help_text())
        return None


def _flush(outgoing: bytearray, actions: list[Action]) -> None:
    if outgoing:
        actions.append(bytes(outgoing))
        outgoing.clear()
