"""`maitred operator`: run the AIServicePool operator (kopf) against the cluster of the kubeconfig or in-cluster."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from maitred.operator.children import DEFAULT_ROUTER_IMAGE


def operator_command(
    namespace: Annotated[Optional[list[str]], typer.Option(
        "--namespace", "-n", help="Namespace to watch (repeatable). Default: all namespaces.")] = None,
    router_image: Annotated[str, typer.Option(help="Image of the pools' router Deployments (a pool's"
                                              " spec.router.image wins).")] = DEFAULT_ROUTER_IMAGE,
    router_pod_defaults: Annotated[Optional[str], typer.Option(
        envvar="MAITRED_ROUTER_POD_DEFAULTS", help="JSON: settings of every pool's router pods (resources,"
        " nodeSelector, tolerations, affinity, topologySpreadConstraints, priorityClassName, imagePullSecrets,"
        " podAnnotations, logLevel); a pool's spec.router wins field by field.")] = None,
    kubeconfig: Annotated[Optional[Path], typer.Option(help="Kubeconfig (default: $KUBECONFIG, else the"
                                                       " in-cluster service account).")] = None,
    peering: Annotated[str, typer.Option(help="Name of the kopf peering object shared by the replicas.")] = "maitred",
    standalone: Annotated[bool, typer.Option("--standalone", help="No peering: for a single replica, or"
                                             " when the peering CRDs are not installed.")] = False,
    priority: Annotated[Optional[int], typer.Option(help="Peering priority: the live replica with the highest"
                                                    " acts, the others wait. Default: from the start time"
                                                    " (ms x 1000 + random 0..999), so the replica started"
                                                    " last acts and replicas never tie (a tie pauses them"
                                                    " all).")] = None,
    liveness: Annotated[Optional[str], typer.Option(help="Serve a liveness probe, e.g."
                                                    " http://0.0.0.0:8081/healthz.")] = None,
    autoscale_period: Annotated[float, typer.Option(
        help="Seconds between two evaluations of an autoscaled pool (its routers' load reports).",
        min=0.1, max=600)] = 3.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text (for people) or json (one object a line, for log"
                                            " collectors).")] = "text",
) -> None:
    """Run the operator: pools' pods in, routing tables, routers and status out."""
    from maitred.cli import logs

    log_level = logs.option_choice(log_level, logs.LEVELS, "--log-level")
    log_format = logs.option_choice(log_format, logs.FORMATS, "--log-format")
    logs.configure(log_level, log_format)
    logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
    if log_level.lower() != "debug":  # kopf says "Handler 'pod_event' succeeded" for every pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if kubeconfig is not None:
        # kopf logs in by itself, from $KUBECONFIG like kubectl; our own client reads the same file.
        os.environ["KUBECONFIG"] = str(kubeconfig)

    import kopf  # here: `maitred --help` should not pay for importing kopf

    from maitred.operator import handlers  # noqa: F401  (registers the handlers)
    from maitred.operator.timing import newest_wins_priority

    namespaces = list(namespace or ())
    try:
        asyncio.run(_preflight(kubeconfig, None if standalone else peering, namespaces))
    except Exception as exc:  # no kubeconfig, no API server, no peering CRD: say which, and stop
        typer.echo(f"maitred operator: {exc}", err=True)
        raise typer.Exit(1) from None
    memo = kopf.Memo(router_image=router_image, router_defaults=_router_pod_defaults(router_pod_defaults),
                     kubeconfig=str(kubeconfig) if kubeconfig else None,
                     namespaces=namespaces, autoscale_period_s=autoscale_period)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=standalone,
        peering_name=None if standalone else peering,
        priority=priority if priority is not None else newest_wins_priority(),
        liveness_endpoint=liveness,
        memo=memo,
    )


async def _preflight(kubeconfig: Path | None, peering: str | None, namespaces: list[str]) -> None:
    """Check that the API server answers, and create the peering object(s) if peering is on.

    kopf does not create the peering object, and without it the replicas cannot see each other and would
    all act; so it is made here. Raises :class:`ApiError` (e.g. the peering CRDs are not installed).
    """
    from maitred.operator.kube import Kube
    from maitred.operator.peering import ensure_peering

    kube = await Kube.connect(kubeconfig)
    try:
        await kube.request("GET", "/version")
        if peering:
            await ensure_peering(kube, peering, namespaces)
    finally:
        await kube.close()


def _router_pod_defaults(raw: str | None):
    """The --router-pod-defaults JSON as settings; exits 2 naming the option if it is not valid."""
    from pydantic import ValidationError

    from maitred.operator.models import RouterPodSettings

    if not raw:
        return RouterPodSettings()
    try:
        return RouterPodSettings.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems, param_hint="--router-pod-defaults") from None
