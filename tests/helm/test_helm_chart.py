"""The chart as helm sees it, no cluster needed: lint, what it renders with default and other values,
and the values it refuses (values.schema.json), with the message a user gets."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from helm_harness import CHART, CRDS, REPO, HelmError, find, one, operator_container

from maitred.operator.children import DEFAULT_ROUTER_IMAGE

KEEP = {"helm.sh/resource-policy": "keep"}
DIGEST = "sha256:" + "ab" * 32


def test_helm_lint_passes_with_default_and_other_values(helm):
    helm.run("lint", "--strict", str(CHART))
    helm.run("lint", "--strict", str(CHART), "--set", "replicaCount=2,watchNamespaces={ml,staging}",
             "--set", "podDisruptionBudget.enabled=true,podMonitor.enabled=true",
             "--set", "grafanaDashboard.enabled=true,prometheusRule.enabled=true")


def test_default_install_is_one_operator_with_cluster_wide_rbac_and_the_crds(helm):
    docs = helm.template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "CustomResourceDefinition",
                     "CustomResourceDefinition", "Deployment", "ServiceAccount"]
    deployment = one(docs, "Deployment", "maitred-operator", "maitred-system")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "maitred-operator"
    container = operator_container(docs)
    assert container["image"] == DEFAULT_ROUTER_IMAGE  # the operator's own default: one image for both
    assert container["args"] == ["operator", f"--router-image={DEFAULT_ROUTER_IMAGE}", "--peering=maitred",
                                 "--liveness=http://0.0.0.0:8081/healthz", "--autoscale-period=3", "--log-level=info",
                                 "--log-format=text"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "maitred-operator",
                                    "namespace": "maitred-system"}]


def test_the_operator_runs_non_root_on_a_read_only_filesystem(helm):
    docs = helm.template()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_other_values_reach_the_manifests(helm):
    docs = helm.template(
        "--set", "replicaCount=2,watchNamespaces={ml,staging},logLevel=debug,logFormat=json,autoscalePeriodSeconds=2",
        "--set", f"image.repository=registry.example/maitred,image.digest={DIGEST}",
        "--set", "routerImage.repository=registry.example/router,routerImage.tag=1.2.3",
        "--set", "nodeSelector.pool=system,tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "--set", "resources.requests.cpu=200m,priorityClassName=system-cluster-critical",
        "--set", "podDisruptionBudget.enabled=true,podMonitor.enabled=true,podMonitor.labels.release=prom",
        "--set", "peering.name=ops,imagePullSecrets[0].name=regcred", release="ml")
    deployment = one(docs, "Deployment", "ml-maitred-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == f"registry.example/maitred@{DIGEST}"
    assert container["args"] == ["operator", "--router-image=registry.example/router:1.2.3", "--peering=ops",
                                 "--namespace=ml", "--namespace=staging",
                                 "--liveness=http://0.0.0.0:8081/healthz", "--autoscale-period=2", "--log-level=debug",
                                 "--log-format=json"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["resources"]["requests"]["cpu"] == "200m"
    # Two replicas: spread over nodes by default, and the budget keeps one through a drain.
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml", "staging"]}


def test_listed_namespaces_get_roles_and_no_cluster_wide_grant_on_their_objects(helm):
    docs = helm.template("--set", "watchNamespaces={ml,staging}")
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "staging"]
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["ml", "staging"]
    assert {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
            "verbs": ["list", "watch", "create", "patch"]} in roles[0]["rules"]
    cluster_rules = one(docs, "ClusterRole")["rules"]
    assert [(r["apiGroups"], r["resources"], r["verbs"]) for r in cluster_rules] == [
        (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
        ([""], ["namespaces"], ["list", "watch"]),
    ]


def test_no_rule_grants_secrets_wildcards_or_escalation(helm):
    for args in ((), ("--set", "watchNamespaces={ml}")):
        docs = helm.template(*args)
        for role in find(docs, "ClusterRole") + find(docs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                if rule["resources"] == ["aiservicepools"]:
                    assert set(rule["verbs"]) == {"get", "list", "watch"}  # spec is the user's


def test_without_peering_the_operator_runs_standalone_and_needs_no_peering_rights(helm):
    docs = helm.template("--set", "peering.enabled=false")
    assert "--standalone" in operator_container(docs)["args"]
    assert not any(a.startswith("--peering") for a in operator_container(docs)["args"])
    assert all("kopf.dev" not in r["apiGroups"] for r in one(docs, "ClusterRole")["rules"])
    assert [d["metadata"]["name"] for d in find(docs, "CustomResourceDefinition")] == ["aiservicepools.maitred.dev"]


def test_crds_can_be_left_out_or_left_to_helm_uninstall(helm):
    assert find(helm.template("--set", "crds.install=false,peering.installCRDs=false"),
                "CustomResourceDefinition") == []
    crds = find(helm.template("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert len(crds) == 3 and all(not c["metadata"].get("annotations") for c in crds)


def test_the_chart_crd_is_the_generated_crd_with_the_keep_policy(helm):
    for name in ("aiservicepools.maitred.dev.yaml", "kopf-peering.yaml"):
        assert (CHART / "files" / "crds" / name).read_text() == (CRDS / name).read_text(), (
            f"helm/maitred/files/crds/{name} differs from crds/{name}: cp crds/{name} helm/maitred/files/crds/")
    rendered = {c["metadata"]["name"]: c for c in find(helm.template(), "CustomResourceDefinition")}
    for path in sorted(CRDS.glob("*.yaml")):
        for source in (d for d in yaml.safe_load_all(path.read_text()) if d):
            crd = rendered.pop(source["metadata"]["name"])
            assert crd["metadata"]["annotations"] == KEEP
            assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
            stripped = {**crd, "metadata": {"name": crd["metadata"]["name"]}}
            assert stripped == source
    assert rendered == {}


def test_chart_app_version_is_the_package_version(helm):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert DEFAULT_ROUTER_IMAGE.endswith(f":{project['version']}")


@pytest.mark.parametrize("args, message", [
    (["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (["--set", "logLevel=verbose"], "at '/logLevel': value must be one of 'debug', 'info', 'warning', 'error'"),
    (["--set", "logFormat=xml"], "at '/logFormat': value must be one of 'text', 'json'"),
    (["--set", "watchNamespaces={Bad_NS}"], "at '/watchNamespaces/0': 'Bad_NS' does not match pattern"),
    (["--set", "image.digest=sha256:xyz"], "at '/image/digest': 'sha256:xyz' does not match pattern"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (["--set", "peering.enabled=maybe"], "at '/peering/enabled': got string, want boolean"),
    (["--set", "healthPort=70000"], "at '/healthPort': maximum: got 70,000, want 65,535"),
    (["--set", "podMonitor.interval=soon"], "at '/podMonitor/interval': 'soon' does not match pattern"),
    (["--set", "serviceMonitor.enabled=true"], "serviceMonitor is now podMonitor"),
    (["--set", "prometheusRule.errorRatio=2"], "at '/prometheusRule/errorRatio'"),
    (["--set", "podDisruptionBudget.maxUnavailable=half"], "at '/podDisruptionBudget/maxUnavailable'"),
    (["--set", "nodeSelector.disk=1"], "at '/nodeSelector/disk': got number, want string"),
    (["--set", "replicaCount=2,peering.enabled=false"],
     "replicaCount > 1 needs peering.enabled: without peering every replica would act on every pool"),
], ids=lambda v: v if isinstance(v, str) and not v.startswith("at ") else None)
def test_bad_values_are_refused_with_a_message_naming_them(helm, args, message):
    with pytest.raises(HelmError) as refused:
        helm.template(*args)
    assert message in refused.value.stderr


def test_router_values_become_every_pools_router_pod_defaults(helm):
    from maitred.operator.children import PoolRef, build_router_deployment
    from maitred.operator.models import PoolSpec, RouterPodSettings

    docs = helm.template("--set", "router.nodeSelector.pool=routers,router.priorityClassName=high",
                         "--set", "router.resources.requests.cpu=2,router.logLevel=debug",
                         "--set", "imagePullSecrets[0].name=regcred")
    env = {e["name"]: e["value"] for e in operator_container(docs)["env"]}
    defaults = RouterPodSettings.model_validate_json(env["MAITRED_ROUTER_POD_DEFAULTS"])
    pool = PoolSpec.model_validate({"selector": {"matchLabels": {"app": "x"}}})
    pod = build_router_deployment(PoolRef("ml", "llama", "uid"), pool, defaults=defaults)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "routers"} and pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": 2}}  # --set writes a number
    default_env = {e["name"]: e["value"] for e in operator_container(helm.template())["env"]}
    assert RouterPodSettings.model_validate_json(default_env["MAITRED_ROUTER_POD_DEFAULTS"]) == RouterPodSettings()
