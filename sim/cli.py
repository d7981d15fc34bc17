"""`maitred sim`: run the simulated OpenAI/vLLM-compatible model server."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from maitred.sim.config import FaultConfig, SimConfig

_FAULTS = "Faults"
_TIMING = "Timing"


def sim_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: Annotated[Optional[list[str]],
                     typer.Option(help="Served model name (repeatable). [default: sim-model]")] = None,
    speed: Annotated[float, typer.Option(help="Speed factor: 2.0 runs twice as fast, 0.5 twice as slow.",
                                         rich_help_panel=_TIMING)] = 1.0,
    zero_latency: Annotated[bool, typer.Option("--zero-latency", help="Engine steps take no time (benchmarks).",
                                               rich_help_panel=_TIMING)] = False,
    max_num_seqs: Annotated[int, typer.Option(help="Requests running at once; the rest wait (FIFO).",
                                              rich_help_panel=_TIMING)] = 256,
    kv_cache_blocks: Annotated[int, typer.Option(help="KV cache capacity in blocks of 16 tokens.",
                                                 rich_help_panel=_TIMING)] = 28_672,
    step_base_ms: Annotated[float, typer.Option(help="Fixed cost of an engine step (ms).",
                                                rich_help_panel=_TIMING)] = 5.75,
    prefill_us_per_token: Annotated[float, typer.Option(help="Cost per uncached prompt token (us).",
                                                        rich_help_panel=_TIMING)] = 17.25,
    decode_us_per_seq: Annotated[float, typer.Option(help="Cost per running sequence per step (us).",
                                                     rich_help_panel=_TIMING)] = 6.0,
    seed: Annotated[int, typer.Option(help="Seed of generated text and injected errors.")] = 0,
    extra_latency_ms: Annotated[float, typer.Option(help="Extra latency before the first token (ms).",
                                                    rich_help_panel=_FAULTS)] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share of inference requests answered with an error (0..1).",
                                              rich_help_panel=_FAULTS)] = 0.0,
    error_status: Annotated[int, typer.Option(help="Status of injected errors (e.g. 500, 503, 429).",
                                              rich_help_panel=_FAULTS)] = 500,
    retry_after: Annotated[int, typer.Option(help="Retry-After (s) of 429 and 503 answers.",
                                             rich_help_panel=_FAULTS)] = 1,
    max_waiting: Annotated[Optional[int], typer.Option(help="Answer 503 when this many requests already wait.",
                                                       rich_help_panel=_FAULTS)] = None,
    reset_after_chunks: Annotated[Optional[int], typer.Option(help="Reset the TCP connection after K streamed chunks.",
                                                              rich_help_panel=_FAULTS)] = None,
    unhealthy: Annotated[bool, typer.Option("--unhealthy", help="/health answers 503.",
                                            rich_help_panel=_FAULTS)] = False,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug or trace.")] = "info",
    log_format: Annotated[str, typer.Option(help="text (for people) or json (one object a line, for log"
                                            " collectors).")] = "text",
) -> None:
    """Run a simulated OpenAI/vLLM-compatible model server whose timing follows continuous batching.

    Faults can also be changed at run time: GET/POST /admin/faults with a JSON object of FaultConfig fields
    (POST merges). {"refuse_connections": true} closes the listening socket: new connects are refused, the
    process stays alive, and the admin endpoint is then unreachable too.
    """
    try:
        config = SimConfig(
            host=host,
            port=port,
            models=model or ["sim-model"],
            speed=speed,
            zero_latency=zero_latency,
            max_num_seqs=max_num_seqs,
            kv_cache_blocks=kv_cache_blocks,
            step_base_ms=step_base_ms,
            prefill_us_per_token=prefill_us_per_token,
            decode_us_per_seq=decode_us_per_seq,
            seed=seed,
            log_level=log_level.lower(),
            faults=FaultConfig(
                extra_latency_ms=extra_latency_ms,
                error_rate=error_rate,
                error_status=error_status,
                retry_after_s=retry_after,
                max_waiting=max_waiting,
                reset_after_chunks=reset_after_chunks,
                unhealthy=unhealthy,
            ),
        )
    except ValidationError as exc:
        # Named as the options are (the config's field names are the options' with dashes).
        problems = "; ".join(f"--{str(e['loc'][-1]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None
    from maitred.cli import logs

    log_format = logs.option_choice(log_format, logs.FORMATS, "--log-format")
    # Imported here so that `maitred --help` does not load uvicorn and the app.
    from maitred.sim.serve import serve

    logs.configure(config.log_level, log_format)
    serve(config, log_config=None)
