"""CRD upgrades with the chart: install version N, `helm upgrade` to N+1 whose CRD adds a field, use the
field; pools survive the upgrade, and `helm uninstall` leaves the CRD and the pools (resource-policy keep)."""

from __future__ import annotations

import shutil

import yaml

from helm_harness import CHART

CRD_FILE = "files/crds/aiservicepools.maitred.dev.yaml"


def next_version_chart(tmp_path):
    """A copy of the chart as its next release: version 0.2.0, with `spec.owner` added to the CRD."""
    chart = tmp_path / "maitred"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.2.0"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    crd = yaml.safe_load((chart / CRD_FILE).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["owner"] = {"type": "string", "maxLength": 63, "description": "who to call about this pool"}
    crd["spec"]["versions"][0]["additionalPrinterColumns"].insert(
        0, {"name": "Owner", "type": "string", "jsonPath": ".spec.owner"})
    (chart / CRD_FILE).write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def pool(name: str, **spec) -> str:
    return yaml.safe_dump({"apiVersion": "maitred.dev/v1alpha1", "kind": "AIServicePool",
                           "metadata": {"name": name},
                           "spec": {"endpoints": [{"url": "http://10.9.8.7:8000"}], **spec}})


def test_helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it(install_release, cluster_helm, kubectl,
                                                              namespace, tmp_path):
    system = install_release("maitred")
    kubectl("apply", "-n", namespace, "-f", "-", input=pool("before"))
    refused = kubectl("apply", "-n", namespace, "-f", "-", input=pool("with-owner", owner="team-a"), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.owner"' in refused.stderr

    cluster_helm.run("upgrade", "maitred", str(next_version_chart(tmp_path)), "--namespace", system)
    assert "maitred-0.2.0" in cluster_helm.run("list", "--namespace", system).stdout

    kubectl("apply", "-n", namespace, "-f", "-", input=pool("with-owner", owner="team-a"))
    got = yaml.safe_load(kubectl("get", "-n", namespace, "aisp", "with-owner", "-o", "yaml").stdout)
    assert got["spec"]["owner"] == "team-a"
    assert "team-a" in kubectl("get", "-n", namespace, "aisp", "with-owner").stdout  # the new column
    bad = kubectl("apply", "-n", namespace, "-f", "-", input=pool("too-long", owner="x" * 64), check=False)
    assert bad.returncode != 0 and "spec.owner" in bad.stderr  # the new field's own validation holds

    cluster_helm.run("uninstall", "maitred", "--namespace", system)
    assert kubectl("get", "crd", "aiservicepools.maitred.dev", check=False).returncode == 0
    names = kubectl("get", "-n", namespace, "aisp", "-o", "name").stdout.split()
    assert sorted(names) == ["aiservicepool.maitred.dev/before", "aiservicepool.maitred.dev/with-owner"]
