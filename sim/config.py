"""Configuration of the simulator: the server, the engine's timing model and the injected faults.

`SimConfig` is what `maitred sim` builds from its flags and what `create_app()` takes;
`FaultConfig` is also the JSON document of `GET/POST /admin/faults`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class FaultConfig(BaseModel):
    """Faults injected into the simulator, for tests (all off by default).

    Fields (JSON names are the same):
    - extra_latency_ms: float >= 0, slept before the request reaches the engine, so it adds to the time to first token.
    - error_rate: 0..1, the share of inference requests (chat, completions, embeddings) answered with `error_status`
      instead, drawn from a random generator seeded by `SimConfig.seed`.
    - error_status: HTTP status of those errors (400..599; 429 and 503 carry `Retry-After`).
    - retry_after_s: the `Retry-After` value (whole seconds) of 429 and 503 answers.
    - max_waiting: if set, a request that would have to wait while `max_waiting` requests already wait is
      answered 503 with `Retry-After` (0 = answer 503 whenever all `max_num_seqs` slots are taken).
    - reset_after_chunks: if set, a streamed response is cut right after its K-th SSE `data:` event by aborting
      the TCP connection (RST), so the client sees a reset / an incomplete chunked body. 0 resets before the
      response starts. Non-streamed responses are unaffected.
    - unhealthy: `/health` answers 503.
    - refuse_connections: close the listening socket(s): new connects are refused, the process stays alive,
      connections already open finish their current request and are then closed. There is no way back (the
      admin endpoint is unreachable too); restart the process. Needs the server started by `maitred sim`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    extra_latency_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    error_status: int = Field(500, ge=400, le=599)
    retry_after_s: int = Field(1, ge=0)
    max_waiting: int | None = Field(None, ge=0)
    reset_after_chunks: int | None = Field(None, ge=0)
    unhealthy: bool = False
    refuse_connections: bool = False


class SimConfig(BaseModel):
    """Everything a simulator instance needs.

    Timing (continuous batching, see `maitred.sim.timing.StepCost`): one engine step takes
    `step_base_ms + prefill_us_per_token * uncached prompt tokens + decode_us_per_seq * running sequences`,
    divided by `speed`, or nothing at all with `zero_latency`. The defaults approximate an 8B model on one H100.

    Capacity: at most `max_num_seqs` requests run; the KV cache holds `kv_cache_blocks` blocks of `block_size`
    tokens (default 28,672 blocks = 458,752 tokens, about what vLLM reports for Llama-3.1-8B on an 80 GB H100).
    A request needing more than `max_model_len` tokens or more blocks than the cache holds is refused with 400.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models: list[str] = Field(default_factory=lambda: ["sim-model"], min_length=1)
    speed: float = Field(1.0, gt=0)
    zero_latency: bool = False
    step_base_ms: float = Field(5.75, ge=0)
    prefill_us_per_token: float = Field(17.25, ge=0)
    decode_us_per_seq: float = Field(6.0, ge=0)
    max_num_seqs: int = Field(256, ge=1)
    kv_cache_blocks: int = Field(28_672, ge=1)
    block_size: int = Field(16, ge=1)
    max_model_len: int = Field(131_072, ge=1)
    embedding_dim: int = Field(64, ge=1, le=8192)
    seed: int = 0
    log_level: LogLevel = "info"
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("models")
    @classmethod
    def _models_are_names(cls, models: list[str]) -> list[str]:
        if any(not m.strip() for m in models):
            raise ValueError("model names must not be empty")
        if len(set(models)) != len(models):
            raise ValueError("model names must be unique")
        return models
