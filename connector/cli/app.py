"""The `tether` command: a thin registry of command groups.

Each group lives in its own module under connector/cli/ and is registered
here with one line. Errors are turned into one clear line on stderr in one
place, the root group, so that no command prints a traceback for something
the person can fix, and so that tests driving the app see the same output.
"""

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from connector.cli import (
    cp,
    daemon,
    describe,
    forward,
    forwards,
    lifetime,
    proxy,
    runs,
    sessions,
    shell,
    ssh_config,
    status,
    tmux,
    vscode,
)
from connector.errors import TetherError
from connector.terminal import escape_text

# The exit status of a process ended by SIGINT, as shells report it.
INTERRUPTED_EXIT_CODE = 130


class _TetherGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TetherError as exc:
            typer.echo(f"tether: {escape_text(str(exc))}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None


app = typer.Typer(
    name="tether",
    cls=_TetherGroup,
    help="Shells, ports, editors and the GPU picture of a training run, from a laptop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(runs.app, name="runs")
app.command("connect")(shell.connect)
app.command("exec")(shell.exec_)
app.add_typer(daemon.app, name="daemon")
app.add_typer(sessions.app, name="sessions")
app.command("forward")(forward.forward)
app.add_typer(forwards.app, name="forwards", hidden=True)
app.command("ssh-config")(ssh_config.ssh_config_command)
app.command("proxy")(proxy.proxy)
app.command("cp")(cp.cp)
app.add_typer(tmux.app, name="tmux")
app.command("status")(status.status)
app.command("describe")(describe.describe)
app.command("update")(lifetime.update)
app.command("stop")(lifetime.stop)
app.command("vscode")(vscode.vscode)


def main() -> None:
    args = forwards.route_forward_subcommands(sys.argv[1:])
    app(prog_name="tether", args=shell.with_default_tmux_name(args))
