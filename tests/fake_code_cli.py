#!/usr/bin/env python3
"""A stand-in for the VS Code `code` CLI, with the flags and output the agent relies on.

The tests put it in a tarball (with a `#!` line naming the test's Python) and
serve that as the CLI download. Knobs, from the environment:

  FAKE_CODE_STATE  a directory: every call is appended to calls.jsonl there;
                   a tunnel waiting for its device login goes on once the
                   file `approve` appears there.
  FAKE_CODE_MODE   "crash-once": the first tunnel run crashes right after its
                   login prompt; "exit-at-once": every tunnel run fails at once.

Like the real CLI, a tunnel that has a login stored in its data dir skips the
device-login prompt.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

LOGIN_URL = "https://github.com/login/device"
LOGIN_CODE = "ABCD-1234"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="code")
    parser.add_argument("--version", action="store_true")
    commands = parser.add_subparsers(dest="command")
    tunnel = commands.add_parser("tunnel")
    tunnel.add_argument("action", nargs="?", choices=["unregister"])
    tunnel.add_argument("--accept-server-license-terms", action="store_true")
    tunnel.add_argument("--no-sleep", action="store_true")
    tunnel.add_argument("--name")
    tunnel.add_argument("--cli-data-dir")
    return parser.parse_args(argv)


def say(line: str, stream: TextIO = sys.stdout) -> None:
    print(line, file=stream, flush=True)


def run_tunnel(args: argparse.Namespace, state: Path, mode: str) -> int:
    if not args.accept_server_license_terms:
        say("error: the server license terms were not accepted", sys.stderr)
        return 1
    if mode == "exit-at-once":
        say("[fake] error Could not start the tunnel: no network", sys.stderr)
        return 3
    say("*\n* Visual Studio Code Server\n*")
    data_dir = Path(args.cli_data_dir or state / "default-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    token = data_dir / "token"
    if not token.exists():
        say(f"To grant access to the server, please log into {LOGIN_URL} and use code {LOGIN_CODE}")
        crashed = state / "crashed"
        if mode == "crash-once" and not crashed.exists():
            crashed.touch()
            say("[fake] error the tunnel panicked", sys.stderr)
            return 101
        while not (state / "approve").exists():
            time.sleep(0.02)
        token.write_text("fake-token")
    say(f"Open this link in your browser https://vscode.dev/tunnel/{args.name}/home/fake")
    while True:
        signal.pause()


def main() -> int:
    state = Path(os.environ["FAKE_CODE_STATE"])
    state.mkdir(parents=True, exist_ok=True)
    with (state / "calls.jsonl").open("a") as calls:
        call = {"argv": sys.argv[1:], "keychain": os.environ.get("VSCODE_CLI_USE_FILE_KEYCHAIN")}
        calls.write(json.dumps(call) + "\n")
    args = parse(sys.argv[1:])
    if args.version:
        say("1.99.0\nfakecommit\nx64")
        return 0
    if args.command != "tunnel":
        say("error: no command given", sys.stderr)
        return 2
    if args.action == "unregister":
        say("Tunnel unregistered")
        return 0
    return run_tunnel(args, state, os.environ.get("FAKE_CODE_MODE", ""))


if __name__ == "__main__":
    sys.exit(main())
