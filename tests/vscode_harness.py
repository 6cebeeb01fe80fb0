"""A stand-in VS Code CLI and the loopback HTTP server that hands it out."""

import http.server
import io
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

FAKE_CLI = Path(__file__).with_name("fake_code_cli.py")


def fake_cli_program() -> bytes:
    """The stand-in's source with a `#!` line naming this Python."""
    body = FAKE_CLI.read_text().split("\n", 1)[1]
    return f"#!{sys.executable}\n{body}".encode()


def tarball(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Downloads:
    """A loopback HTTP server with fixed bodies per path, counting requests."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.hits = 0
        downloads = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                downloads.hits += 1
                body = downloads.bodies.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def serve(self, path: str, body: bytes) -> str:
        self.bodies[path] = body
        return self.url(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
