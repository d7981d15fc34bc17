"""The `maitred` command: `maitred router`, `maitred sim`, `maitred demo` (and later `maitred operator`)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="maitred: a load balancer for AI model servers.")


def _register() -> None:
    # Each subcommand lives beside the code it runs; importing here keeps `maitred --help` cheap.
    from maitred.cli.demo import demo_command
    from maitred.operator.cli import operator_command
    from maitred.router.cli import router_command
    from maitred.sim.cli import sim_command

    app.command("router", help="Run the router in front of a pool's endpoints.")(router_command)
    app.command("operator", help="Run the AIServicePool operator (kopf).")(operator_command)

    app.command("demo", help="Run three simulated replicas and the router, and compare balancing methods.")(demo_command)
    app.command("sim", help="Run a simulated OpenAI/vLLM-compatible model server.")(sim_command)


def main() -> None:
    """Entry point of the `maitred` console script."""
    _register()
    app()


if __name__ == "__main__":
    main()
