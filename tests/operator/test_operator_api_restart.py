"""The operator while the API server is away and when it comes back: every request and watch is retried a
short, capped backoff apart, without end, so the routing table catches up at once, whenever in kopf's old
backoff schedule (1, 1, 2, 3, 5, 8, 13, 21 s) the API server happens to return.

Times in seconds, from the moment a pod's change is visible in the API to the moment the table shows it.
"""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest

from maitred.operator.timing import RETRY_CAP_S, Backoff

from operator_harness import pod_is, serving, template


@contextlib.contextmanager
def api_server_down(control_plane):
    """The API server killed for the duration of the block; back (and ready) at its end, whatever happens."""
    control_plane.stop_apiserver(kill=True)
    try:
        yield
    finally:
        control_plane.start_apiserver()


@pytest.mark.cluster
def test_after_the_api_server_was_down_the_table_catches_up_within_2_s_every_time(
        pools, operator, replicas_kubelet, control_plane):
    pools.apply("llama", {"replicas": 2, "template": template("llama")})
    pools.wait_endpoints("llama", 2)
    pod = sorted(replicas_kubelet.backends())[0]

    lags = []
    # (seconds down, readiness changed while down or right after it is back, the new readiness): the
    # outages end at different points of any backoff schedule.
    for down_s, while_down, ready in ((20, True, False), (20, False, True), (13, True, False)):
        with api_server_down(control_plane):
            if while_down:
                replicas_kubelet.set_ready(pod, ready)  # the kubelet writes it once the API server is back
            time.sleep(down_s)
        if not while_down:
            replicas_kubelet.set_ready(pod, ready)
        changed = pod_is(pools, pod, ready)
        lags.append(serving(pools, "llama", pod, ready) - changed)

    print(f"API server restarts: table behind the pod by {[round(s, 2) for s in lags]} s")
    assert max(lags) < 2.0, f"table behind the pod by {', '.join(f'{s:.2f}' for s in lags)} s"
    assert "Traceback" not in operator.log()


def test_kopf_is_given_backoffs_that_never_run_out_nor_exceed_the_cap():
    backoff = Backoff()
    delays = list(itertools.islice(backoff, 5000))  # 5000 failures in a row: over an hour down
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert max(delays) == RETRY_CAP_S == 1.0
    assert not hasattr(backoff, "__len__"), "kopf gives up after the last backoff of a sized sequence"
    assert list(itertools.islice(backoff, 3)) == [0.1, 0.2, 0.4], "every request starts the sequence afresh"
