"""The `maitred` command: `maitred router`, `maitred operator`, `maitred demo`, `maitred sim`.

Each subcommand lives beside the code it runs and is imported only when it is needed: `maitred router`
imports the router's CLI module and nothing of the operator (kopf, the Kubernetes clients), the demo (the
OpenAI SDK, rich, httpx) or the simulator. `maitred --help` imports all four CLI modules, to list their help,
and each keeps its own heavy imports inside its function body.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
from typer.core import TyperGroup

# name -> (module, function, help), in the order `maitred --help` lists them.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "router": ("maitred.router.cli", "router_command", "Run the router in front of a pool's endpoints."),
    "operator": ("maitred.operator.cli", "operator_command", "Run the AIServicePool operator (kopf)."),
    "demo": ("maitred.cli.demo", "demo_command",
             "Run three simulated replicas and the router, and compare balancing methods."),
    "sim": ("maitred.sim.cli", "sim_command", "Run a simulated OpenAI/vLLM-compatible model server."),
}


class LazyGroup(TyperGroup):
    """A typer group that imports a subcommand's module the first time the subcommand is looked up.

    Click looks a subcommand up only to run it, to print its help, or to list it in the group's help; so
    `maitred router ...` imports the router's CLI module alone. Each subcommand is built by typer from its
    function's signature exactly as `app.command(name, help=...)` would build it, so its options, help and
    errors are the same as if it had been registered eagerly.
    """

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Every subcommand's name, without importing any."""
        return list(SUBCOMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str):
        """The click command named `cmd_name`, imported and built on first use; None if there is none."""
        if cmd_name not in self.commands and cmd_name in SUBCOMMANDS:
            self.commands[cmd_name] = _build(cmd_name)
        return self.commands.get(cmd_name)


def _build(name: str):
    """Import subcommand `name`'s function and let typer turn it into a click command."""
    module, function, help_text = SUBCOMMANDS[name]
    callback = getattr(importlib.import_module(module), function)
    single = typer.Typer(add_completion=False)
    single.command(name, help=help_text)(callback)
    return typer.main.get_command(single)


def _print_version(value: bool) -> None:
    """`--version`: print `maitred <version>` (the installed distribution's) and exit 0."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"maitred {version('maitred')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("maitred (not installed)")
        raise typer.Exit()


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False,
                  help="maitred: a load balancer for AI model servers.")


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Options of `maitred` itself; the work is in the subcommands."""


def main() -> None:
    """Entry point of the `maitred` console script."""
    app()


if __name__ == "__main__":
    main()
