#!/usr/bin/env python3
"""Offline validation of rendered kvtier Kubernetes manifests (the output of `kubectl kustomize`).

1. Schema: every built-in object is checked field by field against the Kubernetes API types shipped in
   the `kubernetes` Python client (Debian python3-kubernetes: the 1.22 API): unknown fields, wrong types
   and missing required fields are errors. Fields these manifests use that are newer than that API are
   declared in NEWER_FIELDS with the release that added them. The ServiceMonitor custom resource is
   checked against SERVICE_MONITOR, the subset of monitoring.coreos.com/v1 that kvtier uses.
2. Wiring: the references between objects and the daemon's config agree (namespace, selectors, port
   names, volumes, the config's socket, probe and metrics ports).

Usage: validate_k8s.py RENDERED.yaml   (exit 1 and one line per problem when invalid)
"""
import re
import sys

import yaml
from kubernetes import client

# (model, json field) -> openapi type, for fields newer than the packaged API.
NEWER_FIELDS = {
    ("V1Probe", "grpc"): "V1GRPCAction",  # Kubernetes 1.24 (beta), GA in 1.27
}
NEWER_MODELS = {
    "V1GRPCAction": ({"port": "int", "service": "str"}, {"port"}),
}

# monitoring.coreos.com/v1 ServiceMonitor, the fields kvtier uses (prometheus-operator API reference).
SERVICE_MONITOR = {
    "spec": {
        "selector": "V1LabelSelector",
        "namespaceSelector": {"matchNames": ["str"], "any": "bool"},
        "jobLabel": "str",
        "endpoints": [{"port": "str", "path": "str", "interval": "str", "scrapeTimeout": "str",
                       "scheme": "str", "honorLabels": "bool"}],
    }
}

errors = []


def err(path, msg):
    errors.append(f"{path}: {msg}")


def model_fields(name):
    """(json name -> openapi type, required json names) of a model."""
    if name in NEWER_MODELS:
        return NEWER_MODELS[name]
    cls = getattr(client, name)
    fields = {cls.attribute_map[a]: t for a, t in cls.openapi_types.items()}
    for (model, field), t in NEWER_FIELDS.items():
        if model == name:
            fields[field] = t
    required = set()
    # The generated constructors reject None for required fields: find them by trying each.
    for attr, json_name in cls.attribute_map.items():
        try:
            obj = cls.__new__(cls)
            obj.local_vars_configuration = client.Configuration()
            getattr(cls, attr).fset(obj, None)
        except ValueError:
            required.add(json_name)
    return fields, required


def check(value, typ, path):
    if typ == "object":  # IntOrString and free-form
        return
    if typ.startswith("list["):
        if not isinstance(value, list):
            return err(path, f"expected a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            check(v, typ[5:-1], f"{path}[{i}]")
        return
    if typ.startswith("dict("):
        if not isinstance(value, dict):
            return err(path, f"expected a map, got {type(value).__name__}")
        inner = typ[typ.index(",") + 1:-1].strip()
        quantity = path.endswith((".limits", ".requests"))
        for k, v in value.items():
            if quantity and isinstance(v, (int, float)) and not isinstance(v, bool):
                continue  # resource quantities may be plain numbers
            check(v, inner, f"{path}.{k}")
        return
    scalar = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if typ in scalar:
        ok = isinstance(value, scalar[typ]) and not (typ == "int" and isinstance(value, bool))
        if not ok:
            err(path, f"expected {typ}, got {value!r}")
        return
    if not isinstance(value, dict):
        return err(path, f"expected an object ({typ}), got {value!r}")
    fields, required = model_fields(typ)
    for k, v in value.items():
        if k not in fields:
            err(path, f"unknown field '{k}' in {typ}")
        elif v is not None:
            check(v, fields[k], f"{path}.{k}")
    for r in sorted(required):
        if value.get(r) is None:
            err(path, f"missing required field '{r}' of {typ}")


def check_custom(value, schema, path):
    if isinstance(schema, str):
        return check(value, schema, path)
    if isinstance(schema, list):
        if not isinstance(value, list):
            return err(path, "expected a list")
        for i, v in enumerate(value):
            check_custom(v, schema[0], f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        return err(path, "expected an object")
    for k, v in value.items():
        if k not in schema:
            err(path, f"unknown field '{k}'")
        else:
            check_custom(v, schema[k], f"{path}.{k}")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_value(text, key):
    m = re.search(rf'^\s*{key}:\s*"([^"]*)"', text, re.M)
    return m.group(1) if m else None


def port_of(address):
    return int(address.rsplit(":", 1)[1]) if address else None


def check_wiring(objs):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    namespaces = [o["metadata"]["name"] for o in by_kind.get("Namespace", [])]
    if len(namespaces) != 1:
        return err("Namespace", f"expected one Namespace, found {namespaces}")
    ns = namespaces[0]
    for o in objs:
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != ns:
            err(f"{o['kind']}/{o['metadata']['name']}", f"not in namespace {ns}")

    (ds,) = by_kind["DaemonSet"]
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    if not matches(ds["spec"]["selector"]["matchLabels"], labels):
        err("DaemonSet", "selector does not match the pod template's labels")
    if not spec.get("hostIPC"):
        err("DaemonSet", "hostIPC must be true (CUDA IPC with the engine workers)")
    (c,) = [c for c in spec["containers"] if c["name"] == "kvtierd"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    for cont in spec.get("initContainers", []) + spec["containers"]:
        for m in cont.get("volumeMounts", []):
            if m["name"] not in volumes:
                err(f"DaemonSet/{cont['name']}", f"mounts undefined volume {m['name']}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "grpc" not in c.get(probe, {}):
            err(f"DaemonSet/kvtierd.{probe}", "must probe the gRPC health service")
        elif c[probe]["grpc"]["port"] not in ports.values():
            err(f"DaemonSet/kvtierd.{probe}", "probes a port the container does not expose")

    # The ConfigMap mounted as the config, and what the config says.
    cm_name = volumes["config"]["configMap"]["name"]
    cms = [o for o in by_kind.get("ConfigMap", []) if o["metadata"]["name"] == cm_name]
    if not cms:
        return err("DaemonSet", f"config volume refers to missing ConfigMap {cm_name}")
    arg = next((a for a in c.get("args", []) if a.startswith("--config=")), None)
    if arg is None:
        return err("DaemonSet/kvtierd", "no --config= argument")
    conf_path = arg.split("=", 1)[1]
    conf_dir, conf_key = conf_path.rsplit("/", 1)
    if mounts.get("config") != conf_dir or conf_key not in cms[0].get("data", {}):
        return err("DaemonSet/kvtierd", f"{conf_path} is not a key of the mounted ConfigMap")
    conf = cms[0]["data"][conf_key]
    socket = config_value(conf, "socket_path")
    if socket is None or socket.rsplit("/", 1)[0] != mounts.get("socket-dir"):
        err("config", f"socket_path {socket} is not in the socket-dir mount {mounts.get('socket-dir')}")
    if config_value(conf, "ssd_dir") != mounts.get("ssd"):
        err("config", "ssd_dir is not the ssd volume's mount path")
    if port_of(config_value(conf, "tcp_address")) != ports.get("grpc-health"):
        err("config", "tcp_address port is not the grpc-health container port the probes use")
    if port_of(config_value(conf, "metrics_address")) != ports.get("metrics"):
        err("config", "metrics_address port is not the metrics container port")

    # Service -> pods, ServiceMonitor -> Service, NetworkPolicy -> pods.
    (svc,) = by_kind["Service"]
    if not matches(svc["spec"]["selector"], labels):
        err("Service", "selector does not select the kvtierd pods")
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for p in svc["spec"]["ports"]:
        if p.get("targetPort") not in ports:
            err("Service", f"targetPort {p.get('targetPort')} is not a named container port")
    (sm,) = by_kind["ServiceMonitor"]
    if not matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
        err("ServiceMonitor", "selector does not select the metrics Service")
    for e in sm["spec"]["endpoints"]:
        if e["port"] not in svc_ports:
            err("ServiceMonitor", f"endpoint port {e['port']} is not a port name of the Service")
    for np in by_kind.get("NetworkPolicy", []):
        if not matches(np["spec"]["podSelector"]["matchLabels"], labels):
            err("NetworkPolicy", "podSelector does not select the kvtierd pods")

    # The sample worker shares the socket directory and the IPC namespace.
    for w in by_kind.get("Pod", []):
        name = f"Pod/{w['metadata']['name']}"
        if not w["spec"].get("hostIPC"):
            err(name, "hostIPC must be true (CUDA IPC with kvtierd)")
        host_paths = {v["name"]: v.get("hostPath", {}).get("path") for v in w["spec"]["volumes"]}
        if volumes["socket-dir"]["hostPath"]["path"] not in host_paths.values():
            err(name, "does not mount the daemon's socket directory")


def main():
    with open(sys.argv[1]) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    if not objs:
        print(f"{sys.argv[1]}: no objects")
        return 1
    for o in objs:
        path = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        if o.get("kind") == "ServiceMonitor":
            if o.get("apiVersion") != "monitoring.coreos.com/v1":
                err(path, "ServiceMonitor must be monitoring.coreos.com/v1")
            check(o["metadata"], "V1ObjectMeta", f"{path}.metadata")
            check_custom({k: v for k, v in o.items() if k not in ("apiVersion", "kind", "metadata")},
                         SERVICE_MONITOR, path)
            continue
        version = o.get("apiVersion", "").split("/")[-1]
        model = version.capitalize() + o.get("kind", "")
        if not hasattr(client, model):
            err(path, f"unknown apiVersion/kind {o.get('apiVersion')}/{o.get('kind')}")
            continue
        check(o, model, path)
    if not errors:  # the wiring checks assume schema-valid objects
        try:
            check_wiring(objs)
        except (KeyError, ValueError, TypeError) as e:
            err("wiring", f"an object the checks rely on is missing or malformed: {e!r}")
    for e in errors:
        print(e)
    print(f"{sys.argv[1]}: {len(objs)} objects, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
