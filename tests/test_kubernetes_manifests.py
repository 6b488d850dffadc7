"""The Kubernetes manifests of cluster-configs/kubernetes/, checked against the schemas a
cluster checks them with.

* ``DaskCluster``, ``DaskJob``, ``DaskWorkerGroup``: the dask operator's own CRDs, as the
  dask-kubernetes wheel ships them (``openAPIV3Schema``), with jsonschema. They are
  structural schemas: a field the schema does not name is pruned by the API server, and
  refused by ``kubectl apply`` (strict field validation); here it is an error. Lists of
  ``x-kubernetes-list-type: map`` must not repeat a key.
* The built-in kinds (ConfigMap, NetworkPolicy, PersistentVolumeClaim), the pod and
  service specs inside the operator's resources, and the Kubernetes parts of the Helm
  values: the Kubernetes client's models (generated from Kubernetes' OpenAPI; unknown
  fields and wrong types are refused), strictly.

The ``dask/dask`` Helm chart ships no values schema; its values are checked by the
Kubernetes parts they hold. A broken manifest (a misspelled field, a wrong type, a
repeated port) fails, which the last tests show.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import dagflow

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "cluster-configs" / "kubernetes"
PRELOAD = "dagflow.monitor.preload"
#: Where the dask-kubernetes wheel keeps the operator's CRDs.
CRDS = Path("operator", "deployment", "helm", "dask-kubernetes-operator", "crds")
#: A Kubernetes object name (RFC 1123 subdomain).
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict]]:
    """Every document of every manifest, with ``file#index`` for test ids."""
    return [(f"{path.name}#{i}", doc) for path in sorted(K8S.glob("*.yaml"))
            if path.name != "helm-values.yaml" for i, doc in enumerate(load_all(path))]


# -- the operator's CRDs as JSON schemas ----------------------------------------------------


def structural(node: Any, *, root: bool = False) -> Any:
    """A CRD's ``openAPIV3Schema`` as a JSON schema with the API server's semantics."""
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    schema = {k: structural(v) for k, v in node.items()
              if k not in ("properties", "items", "additionalProperties")}
    if "properties" in node:
        schema["properties"] = {k: structural(v) for k, v in node["properties"].items()}
    if "items" in node:
        schema["items"] = structural(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        schema["additionalProperties"] = structural(node["additionalProperties"])
    elif "additionalProperties" in node:
        schema["additionalProperties"] = node["additionalProperties"]
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if root or node.get("x-kubernetes-embedded-resource"):  # the API server's own fields
        schema.setdefault("properties", {}).update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    # a structural schema prunes (and kubectl refuses) what it does not name
    if (schema.get("type") == "object" and "properties" in schema
            and "additionalProperties" not in schema
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


def _unique_list_keys(validator, keys, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """``x-kubernetes-list-type: map``: no two items with the same keys."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, schema["items"]["properties"].get(k, {}).get("default"))
                    for k in keys)
        if key in seen:
            named = dict(zip(keys, key, strict=True))
            yield jsonschema.ValidationError(f"duplicate {named} in a list keyed by "
                                             f"{', '.join(keys)}")
        seen.add(key)


Validator = jsonschema.validators.extend(jsonschema.Draft7Validator,
                                         {"x-kubernetes-list-map-keys": _unique_list_keys})


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Any]:
    """``(apiVersion, kind)`` -> a validator for it, from the installed dask-kubernetes."""
    spec = importlib.util.find_spec("dask_kubernetes")  # found, not imported
    if spec is None or spec.origin is None:
        pytest.skip("dask-kubernetes is not installed (pip install -e '.[test]')")
    validators = {}
    for path in sorted((Path(spec.origin).parent / CRDS).glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = structural(version["schema"]["openAPIV3Schema"], root=True)
            Validator.check_schema(schema)
            validators[(f"{group}/{version['name']}", kind)] = Validator(schema)
    assert {kind for _, kind in validators} >= {"DaskCluster", "DaskJob", "DaskWorkerGroup"}
    return validators


def crd_errors(crds, doc: dict) -> list[str]:
    validator = crds[(doc["apiVersion"], doc["kind"])]
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(doc)]


# -- the built-in kinds, by the Kubernetes client's models ------------------------------------


def model(name: str) -> Any:
    client = pytest.importorskip("kubernetes.client")
    return getattr(client, name)


def check_model(name: str, value: Any) -> None:
    """Validate ``value`` (JSON field names) with the Kubernetes model ``name``, strictly."""
    model(name).model_validate(value, strict=True)


BUILT_IN = {("v1", "ConfigMap"): "V1ConfigMap",
            ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
            ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy"}


def check_dask_cluster_spec(spec: dict) -> None:
    """The pods and the Service the operator makes from a DaskCluster's spec."""
    check_model("V1PodSpec", spec["worker"]["spec"])
    check_model("V1PodSpec", spec["scheduler"]["spec"])
    check_model("V1ServiceSpec", spec["scheduler"]["service"])


def check_document(crds, doc: dict) -> None:
    """One manifest document, by the schema its kind has; its metadata as the API
    server's own (a name that is a valid object name)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    check_model("V1ObjectMeta", doc["metadata"])
    assert NAME.fullmatch(doc["metadata"]["name"]), doc["metadata"]["name"]
    if key in BUILT_IN:
        check_model(BUILT_IN[key], doc)
        return
    assert key in crds, f"no schema for {key}"
    errors = crd_errors(crds, doc)
    assert not errors, "\n".join(errors)
    kind, spec = doc["kind"], doc["spec"]
    if kind == "DaskCluster":
        check_dask_cluster_spec(spec)
    elif kind == "DaskJob":
        check_model("V1PodSpec", spec["job"]["spec"])
        check_dask_cluster_spec(spec["cluster"]["spec"])
    elif kind == "DaskWorkerGroup":
        check_model("V1PodSpec", spec["worker"]["spec"])


@pytest.mark.parametrize("where, doc", manifests(), ids=[w for w, _ in manifests()])
def test_every_manifest_is_valid_for_its_kind(crds, where, doc):
    check_document(crds, doc)


def test_the_operator_kinds_are_all_there(crds):
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"DaskCluster", "DaskJob", "DaskWorkerGroup", "ConfigMap", "NetworkPolicy",
            "PersistentVolumeClaim"} <= kinds
    versions = {doc["apiVersion"] for _, doc in manifests() if doc["kind"].startswith("Dask")}
    assert versions == {"kubernetes.dask.org/v1"}
    assert importlib.metadata.version("dask-kubernetes")  # the schemas' source, installed


# -- a broken manifest fails ---------------------------------------------------------------


def first(kind: str) -> dict:
    return copy.deepcopy(next(doc for _, doc in manifests() if doc["kind"] == kind))


def breakages() -> list[tuple[str, str, Any, str]]:
    """(kind, what is broken, how, what the error names): each must make it invalid."""
    def container(spec):  # the first worker container of a DaskCluster-like spec
        return spec["worker"]["spec"]["containers"][0]

    return [
        ("DaskCluster", "misspelled field in spec",
         lambda d: d["spec"].update(workers=d["spec"].pop("worker")), "'workers' was unexpected"),
        ("DaskCluster", "unknown field in a container",
         lambda d: container(d["spec"]).update(imagePolicy="Always"),
         "'imagePolicy' was unexpected"),
        ("DaskCluster", "replicas as a string",
         lambda d: d["spec"]["worker"].update(replicas="2"), "'2' is not of type 'integer'"),
        ("DaskCluster", "a service port without its number",
         lambda d: d["spec"]["scheduler"]["service"]["ports"][0].pop("port"),
         "'port' is a required property"),
        ("DaskCluster", "the same container port twice",
         lambda d: container(d["spec"])["ports"].append(container(d["spec"])["ports"][0]),
         "duplicate {'containerPort': 8788, 'protocol': 'TCP'}"),
        ("DaskCluster", "args as one string",
         lambda d: container(d["spec"]).update(args="dask worker"),
         "'dask worker' is not of type 'array'"),
        ("DaskCluster", "a name that is not an object name",
         lambda d: d["metadata"].update(name="Dagflow_Cluster"), "Dagflow_Cluster"),
        ("DaskJob", "misspelled field in the job pod",
         lambda d: d["spec"]["job"]["spec"]["containers"][0].update(volumeMount=[]),
         "'volumeMount' was unexpected"),
        ("DaskJob", "no cluster", lambda d: d["spec"].pop("cluster"),
         "'cluster' is a required property"),
        ("DaskJob", "memory limit as a number",
         lambda d: container(d["spec"]["cluster"]["spec"])["resources"]["limits"].update(
             memory=16), "16 is not of type 'string'"),
        ("DaskWorkerGroup", "no cluster named", lambda d: d["spec"].pop("cluster"),
         "'cluster' is a required property"),
        ("DaskWorkerGroup", "a misspelled field",
         lambda d: d["spec"]["worker"].update(replica=1), "'replica' was unexpected"),
        ("NetworkPolicy", "policyTypes as a string",
         lambda d: d["spec"].update(policyTypes="Ingress"), "spec.policyTypes"),
        ("NetworkPolicy", "a misspelled field", lambda d: d["spec"].update(podselector={}),
         "spec.podselector"),
        ("ConfigMap", "a number as data", lambda d: d["data"].update(count=3), "data.count"),
        ("PersistentVolumeClaim", "accessModes as a string",
         lambda d: d["spec"].update(accessModes="ReadWriteMany"), "spec.accessModes"),
    ]


@pytest.mark.parametrize("kind, what, breakage, named", breakages(),
                         ids=[f"{k}-{w}" for k, w, _, _ in breakages()])
def test_a_broken_manifest_fails(crds, kind, what, breakage, named):
    doc = first(kind)
    check_document(crds, copy.deepcopy(doc))  # valid as shipped
    breakage(doc)
    with pytest.raises((AssertionError, ValueError)) as failed:  # pydantic's is a ValueError
        check_document(crds, doc)
    assert named in str(failed.value)


def test_crd_schemas_refuse_unknown_fields_but_keep_free_maps(crds):
    """The structural conversion: unknown fields refused, labels and limits (maps of
    strings by ``additionalProperties``) free, nullable status fields null."""
    doc = first("DaskCluster")
    doc["spec"]["worker"]["metadata"] = {"labels": {"any.key/x": "y"}}
    assert not crd_errors(crds, doc)
    doc["spec"]["worker"]["metadata"]["labels"]["n"] = 1
    assert any("labels.n" in e for e in crd_errors(crds, doc))
    job = first("DaskJob")
    job["status"] = {"jobStatus": None, "startTime": None}
    assert not crd_errors(crds, job)


# -- what the manifests say ----------------------------------------------------------------


def containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


def mounts(pod_spec: dict, container: str) -> dict[str, str]:
    """Mount path -> the PersistentVolumeClaim (or ConfigMap) mounted there."""
    volumes = {}
    for v in pod_spec.get("volumes", []):
        source = v.get("persistentVolumeClaim", {}).get("claimName") or \
            "configmap:" + v.get("configMap", {}).get("name", "?")
        volumes[v["name"]] = source
    return {m["mountPath"]: volumes[m["name"]]
            for m in containers(pod_spec)[container].get("volumeMounts", [])}


def check_cluster_commands(spec: dict, cluster_name: str) -> None:
    worker = containers(spec["worker"]["spec"])["worker"]
    assert worker["args"][:2] == ["dask", "worker"]
    assert worker["args"][worker["args"].index("--resources") + 1].startswith("MEMORY=")
    scheduler = containers(spec["scheduler"]["spec"])["scheduler"]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert scheduler["args"][scheduler["args"].index("--preload") + 1] == PRELOAD
    service = spec["scheduler"]["service"]
    assert service["type"] == "ClusterIP"
    assert service["selector"]["dask.org/cluster-name"] == cluster_name


def batch_script_run() -> list[str]:
    """The `dagflow run ...` command of the Slurm batch script, split."""
    text = (ROOT / "cluster-configs" / "slurm-batch.sh").read_text()
    [line] = [line for line in text.splitlines() if line.startswith("dagflow run ")]
    return shlex.split(line)


def test_the_dask_job_runs_the_entry_point_the_slurm_batch_script_runs():
    """Both are `dagflow run WORKFLOW --input ... --output ...` on a cluster that is up:
    the Slurm script names its scheduler file, the DaskJob's pod has the operator's
    DASK_SCHEDULER_ADDRESS."""
    docs = {d["kind"]: d for d in load_all(K8S / "dask-job.yaml")}
    job = docs["DaskJob"]
    runner = containers(job["spec"]["job"]["spec"])["job"]
    slurm = batch_script_run()
    command = runner.get("command", []) + runner["args"]
    assert command[:2] == slurm[:2] == ["dagflow", "run"]
    for flag in ("--input", "--output"):
        assert flag in command and flag in slurm
    assert "--scheduler-file" in slurm and "--cluster" not in command
    check_cluster_commands(job["spec"]["cluster"]["spec"], job["metadata"]["name"])
    # the workflow it runs comes from the ConfigMap, and is a valid dagflow workflow
    [workflow_text] = docs["ConfigMap"]["data"].values()
    dagflow.Workflow.from_yaml(workflow_text).validate()
    assert Path(command[2]).name in docs["ConfigMap"]["data"]
    assert mounts(job["spec"]["job"]["spec"], "job")[str(Path(command[2]).parent)] == \
        "configmap:" + docs["ConfigMap"]["metadata"]["name"]


def test_data_lives_on_one_shared_volume_mounted_alike_everywhere():
    """Workers read inputs and write outputs themselves, and the run's driver writes the
    run directory: every pod of the interactive cluster mounts the same ReadWriteMany
    claim at the same path."""
    [claim] = [d for d in load_all(K8S / "data-volume.yaml")
               if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    [cluster] = load_all(K8S / "dask-cluster.yaml")
    [group] = load_all(K8S / "dask-worker-group.yaml")
    pods = [(cluster["spec"]["worker"]["spec"], "worker"),
            (group["spec"]["worker"]["spec"], "worker")]
    for pod, container in pods:
        assert mounts(pod, container).get("/data") == name, (container, mounts(pod, container))


#: The storage settings a pod of the DaskJob must have from the Secret.
S3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "DASK_DAGFLOW__STORAGE__OPTIONS__S3__ENDPOINT_URL"}


def test_the_dask_job_reads_and_writes_object_storage_with_credentials_from_a_secret():
    """The DaskJob's inputs and output are s3:// URLs and no pod of it mounts a volume
    for data; the job pod (which lists and writes the run's state) and every worker
    (which read and write the objects) take the credentials and the endpoint from one
    Secret, by reference: no value of them is written in the manifest. The endpoint's
    variable is the one Dask's configuration reads as dagflow's
    ``storage.options.s3.endpoint_url``."""
    import dask.config

    from dagflow.io.storage import resolve_options

    docs = load_all(K8S / "dask-job.yaml")
    assert {d["kind"] for d in docs} == {"ConfigMap", "DaskJob"}  # no Secret shipped
    job = next(d for d in docs if d["kind"] == "DaskJob")
    runner = containers(job["spec"]["job"]["spec"])["job"]
    args = runner["args"]
    for flag in ("--input", "--output"):
        assert args[args.index(flag) + 1].startswith("s3://"), args
    pods = {"job": (job["spec"]["job"]["spec"], "job"),
            "worker": (job["spec"]["cluster"]["spec"]["worker"]["spec"], "worker")}
    secrets = set()
    for role, (pod, name) in pods.items():
        assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", [])), role
        assert "/data" not in mounts(pod, name), role
        env = {e["name"]: e for e in containers(pod)[name].get("env", [])}
        assert set(env) >= S3_ENV, (role, sorted(env))
        for variable in S3_ENV:
            assert "value" not in env[variable], (role, variable)  # referenced, not inlined
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            secrets.add(ref["name"])
        assert env["DASK_DAGFLOW__STORAGE__OPTIONS__S3__ENDPOINT_URL"]["valueFrom"][
            "secretKeyRef"].get("optional") is True  # AWS S3 needs no endpoint
        assert not containers(pod)[name].get("envFrom"), role
    assert len(secrets) == 1
    # what the endpoint's variable becomes in dagflow's configuration
    endpoint = "http://minio.storage:9000"
    collected = dask.config.collect_env({"DASK_DAGFLOW__STORAGE__OPTIONS__S3__ENDPOINT_URL":
                                         endpoint})
    with dask.config.set(collected):
        assert resolve_options("s3")["endpoint_url"] == endpoint


def test_the_worker_group_joins_the_cluster_and_the_profile_finds_its_spec():
    [cluster] = load_all(K8S / "dask-cluster.yaml")
    check_cluster_commands(cluster["spec"], cluster["metadata"]["name"])
    [group] = load_all(K8S / "dask-worker-group.yaml")
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    worker = containers(group["spec"]["worker"]["spec"])["worker"]
    assert worker["args"][:2] == ["dask", "worker"] and "--resources" in worker["args"]
    from dagflow.runtime.profiles import load_profile

    profile = load_profile("kubernetes")
    assert Path(profile.resolved_options()["custom_cluster_spec"]) == \
        (K8S / "dask-cluster.yaml").resolve()


def test_network_policies_guard_the_schedulers_and_workers():
    policies = load_all(K8S / "network-policy.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    assert {p["spec"]["podSelector"]["matchLabels"]["dask.org/component"]
            for p in policies} == {"scheduler", "worker"}


def test_helm_values_hold_valid_kubernetes_parts():
    """The dask/dask chart ships no values schema: its values' Kubernetes parts are
    checked by the Kubernetes models, and dagflow's choices by name."""
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    for part in ("scheduler", "worker"):
        check_model("V1ResourceRequirements", values[part]["resources"])
    for env in values["worker"]["env"]:
        check_model("V1EnvVar", env)
    for volume in values["worker"]["mounts"]["volumes"]:
        check_model("V1Volume", volume)
    for mount in values["worker"]["mounts"]["volumeMounts"]:
        check_model("V1VolumeMount", mount)
    assert values["scheduler"]["extraArgs"] == ["--preload", PRELOAD]
    assert values["scheduler"]["serviceType"] == "ClusterIP"
    assert values["worker"]["extraArgs"][0] == "--resources"
    assert values["jupyter"]["enabled"] is False
    broken = copy.deepcopy(values["worker"]["mounts"]["volumes"][0])
    broken["persistentVolumeClaim"]["claim"] = broken["persistentVolumeClaim"].pop("claimName")
    with pytest.raises(ValueError):
        check_model("V1Volume", broken)
