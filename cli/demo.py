"""`maitred demo`: three simulated replicas, the router, and real OpenAI traffic through each method.

Replica c runs at half the speed of a and b, so the methods differ visibly: round-robin gives it a
third of the requests regardless; least-connections, least-response-time and least-load send it
fewer because its requests stay in flight (and in its queue) longer; weighted follows the table's
weights (2:2:1). The traffic is multi-turn conversations, each turn resending the conversation so
far, so prefix-affinity, which keeps a conversation on the replica that holds it in KV cache, serves
far more prompt tokens from cache. Every method gets the same requests, from cold caches. Finally
replica a is killed mid-run, and requests keep succeeding on b and c.

This module is the command's signature and the demo's setup; the run itself, with the OpenAI SDK, rich and
httpx, is in :mod:`maitred.cli.demo_run`, imported only when the demo runs.
"""

from __future__ import annotations

import typer

HOST = "127.0.0.1"
MODEL = "demo-llama-8b"
METHODS = ("round-robin", "least-connections", "weighted", "least-response-time", "least-load", "prefix-affinity")
REPLICAS = {"a": 1.0, "b": 1.0, "c": 0.5}  # replica name -> speed (c is twice as slow)
WEIGHTS = {"a": 2, "b": 2, "c": 1}


def demo_command(
    requests: int = typer.Option(120, help="Requests per balancing method."),
    concurrency: int = typer.Option(16, help="Requests in flight at once."),
    seed: int = typer.Option(7, help="Seed of the request mix."),
) -> None:
    """Run three simulated replicas and the router on 127.0.0.1, and drive traffic through each method."""
    try:
        from maitred.cli.demo_run import run_demo  # here: `maitred --help` should not import openai, rich, httpx
    except ModuleNotFoundError as exc:
        if exc.name not in ("openai", "httpx"):
            raise
        typer.echo(f"Error: maitred demo needs {exc.name}, from the demo extra: python3 -m pip install "
                   "'maitred[demo]' (from a checkout: python3 -m pip install -e '.[demo]')", err=True)
        raise typer.Exit(1) from None
    run_demo(requests, concurrency, seed)
