"""The operator behind a proxy that freezes every connection to the API server (half-open: no data, no FIN,
no RST): watches end after 6 s and are cut after 10 s, pooled connections are dropped with them, plain
requests give up after 5 s of silence, and every connection carries TCP keep-alive.

Times in seconds, from the freeze to the moment the routing table shows a pod's change made right after it.
"""

from __future__ import annotations

import re
import subprocess
import time
from urllib.parse import urlparse

import pytest
import yaml

from cluster.tcpproxy import FreezableProxy

from maitred.operator.timing import KEEPALIVE_IDLE_S

from operator_harness import kubeconfig_via, pod_is, serving, template

pytestmark = pytest.mark.cluster


def keepalive_timers_s(pid: int, port: int) -> list[float]:
    """The keep-alive timers (s to the next probe, as `ss -o` shows them) of process `pid`'s TCP
    connections to 127.0.0.1:`port`."""
    out = subprocess.run(["ss", "-tnpo", "state", "established", "dst", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    timers = []
    for line in out.splitlines():
        if f"pid={pid}," in line and (m := re.search(r"timer:\(keepalive,([^,]+),", line)):
            parts = re.findall(r"([\d.]+)(min|sec|ms)", m.group(1))
            timers.append(sum(float(n) * {"min": 60, "sec": 1, "ms": 0.001}[unit] for n, unit in parts))
    return timers


def test_a_frozen_connection_to_the_api_server_is_replaced_within_15_s(
        pools, start_operator, replicas_kubelet, kubeconfig, tmp_path):
    server = urlparse(yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"])
    with FreezableProxy(server.hostname, server.port) as proxy:
        operator = start_operator(via=kubeconfig_via(kubeconfig, proxy.address, tmp_path / "proxied.kubeconfig"))
        pools.apply("llama", {"replicas": 2, "template": template("llama")})
        pools.wait_endpoints("llama", 2)
        pod = sorted(replicas_kubelet.backends())[0]
        time.sleep(3)  # a quiet moment: watches open, pooled connections idle

        timers = keepalive_timers_s(operator.proc.pid, proxy.port)
        assert timers and max(timers) <= KEEPALIVE_IDLE_S, f"keep-alive timers of the operator's connections: {timers}"

        lags = []
        for ready in (False, True):
            frozen_at = time.monotonic()
            assert proxy.freeze() > 0, "the operator's connections go through the proxy"
            replicas_kubelet.set_ready(pod, ready)
            pod_is(pools, pod, ready)
            lags.append(serving(pools, "llama", pod, ready) - frozen_at)
            time.sleep(1)

    print(f"frozen connections: table caught up {[round(s, 1) for s in lags]} s after the freeze")
    assert max(lags) < 15.0, f"the table caught up {', '.join(f'{s:.1f}' for s in lags)} s after the freeze"
