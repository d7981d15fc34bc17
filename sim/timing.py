"""The cost of one engine step under continuous batching (a pure function, no clock)."""

from __future__ import annotations

from dataclasses import dataclass

from maitred.sim.config import SimConfig


@dataclass(frozen=True, slots=True)
class StepCost:
    """Duration of one engine step, in seconds.

    step_s = (base_s + prefill_s_per_token * prefill_tokens + decode_s_per_seq * running_seqs) / speed

    - prefill_tokens: uncached prompt tokens of the requests admitted in this step (they are prefilled in it);
    - running_seqs: sequences in the batch of this step, the newly admitted ones included; each gets one token.

    A linear model of a vLLM step, as used by the vLLM and Vidur simulators: a fixed cost (kernel launches,
    scheduling, reading the weights), a per-token prefill cost (compute bound) and a per-sequence decode cost
    (reading each sequence's KV cache). `zero=True` makes every step free (router overhead benchmarks).
    """

    base_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    speed: float = 1.0
    zero: bool = False

    @classmethod
    def from_config(cls, config: SimConfig) -> StepCost:
        """Build the cost model from `SimConfig` (ms and us there, seconds here)."""
        return cls(
            base_s=config.step_base_ms / 1e3,
            prefill_s_per_token=config.prefill_us_per_token / 1e6,
            decode_s_per_seq=config.decode_us_per_seq / 1e6,
            speed=config.speed,
            zero=config.zero_latency,
        )

    def step_s(self, prefill_tokens: int, running_seqs: int) -> float:
        """Seconds one step takes; 0.0 in zero-latency mode."""
        if self.zero:
            return 0.0
        cost = self.base_s + self.prefill_s_per_token * prefill_tokens + self.decode_s_per_seq * running_seqs
        return cost / self.speed
