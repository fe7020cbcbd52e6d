#!/usr/bin/env python3
"""Renders every kustomize overlay under deploy/k8s and checks the deployment's invariants.

No cluster needed: `kubectl kustomize` renders offline. For each overlay (gpu, cpu, sharded) it
checks that the workload's probes are native gRPC probes on the gRPC port, the securityContext is
locked down, resources have requests and limits, the GPU limit is in the GPU overlays only, the
grace period covers preStop + drain, selectors match the pod labels, images are pinned, the PDB and
HPA target the workload, the HPA's metric is one the prometheus-adapter rule serves from a metric
the server exports, the headless Service is headless, and (sharded) the StatefulSet's replicas
agree with --shard-peers. Also renders deploy/k8s/weights-loader and deploy/k8s/monitoring.

With --server-binary, every flag the manifests (and the images' CMDs) pass to marlin-server must be
one that its --help lists, with a value of the type and in the range --help gives (a number of
seconds for --drain-timeout, a size with units for --memory-headroom, a member of a choice...).

Exit status: 0 all checks passed, 1 some failed, 77 kubectl or PyYAML is missing (ctest: skipped).
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # Debian: python3-yaml
    print("SKIP: PyYAML is not installed (apt-get install python3-yaml)")
    sys.exit(77)

OVERLAYS = {
    # overlay: (workload kind, expects a GPU, expected --backend)
    "gpu": ("Deployment", True, "cuda"),
    "cpu": ("Deployment", False, "cpu"),
    "sharded": ("StatefulSet", True, "cuda"),
}
WORKLOAD = "marlin-server"
CONTAINER = "server"
QUEUE_METRIC = "marlin_queue_seconds"  # the histogram the server exports


class Checker:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL: {what}")
        return ok


def render(path):
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def quantity(value):
    """Kubernetes quantity -> float ("2m" -> 0.002, "4Gi" -> 4 * 2**30)."""
    s = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "n": 1e-9, "u": 1e-6,
                "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, scale in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * scale
    return float(s)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(doc, container, docs):
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then env values."""
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            maps = find(docs, "ConfigMap", source["configMapRef"]["name"])
            if maps:
                env.update(maps[0].get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def expand(arg, env):
    """Kubernetes $(VAR) expansion; an unknown variable stays as written (a misconfiguration)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: str(env[m.group(1)]) if m.group(1) in env else m.group(0), arg)


def parse_flags(args):
    flags = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value
    return flags


def port_of(hostport):
    return int(hostport.rsplit(":", 1)[1])


# CLI11::AsSizeValue: a whole number, optionally a unit (b, k, kb, KiB, M, MiB, ...).
SIZE_RE = re.compile(r"^\d+\s*([kmgtpe]i?b?|b)?$", re.IGNORECASE)


def server_help(binary):
    """The options of `marlin-server --help`: {name: type spec}, e.g. "FLOAT:FLOAT in [0 - 3600]"."""
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    options = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^\s+--([a-z0-9][a-z0-9-]*)(?:\s+([A-Z]\S*(?: in \[[^\]]*\])?))?", line)
        if m:
            spec = m.group(2) or ""
            # A size's spec continues with its unit list: "UINT:SIZE [b, kb(=1024b), ...]".
            if spec.endswith(":SIZE"):
                spec += " [units]"
            options[m.group(1)] = re.sub(r"=.*$", "", spec)
    return options


def flag_value_problem(spec, value):
    """Why `value` does not fit the --help type `spec`, or None."""
    kind = spec.split(":")[-1].split(" ")[0] if spec else ""
    try:
        if kind in ("INT", "UINT"):
            number = int(value)
            if kind == "UINT" and number < 0:
                return "is negative"
        elif kind == "FLOAT":
            number = float(value)
        elif kind == "SIZE":
            return None if SIZE_RE.match(value) else "is not a size (bytes, or with a unit: 2GiB)"
        else:
            number = None
    except ValueError:
        return f"is not {'an integer' if kind in ('INT', 'UINT') else 'a number'}"
    choice = re.search(r"\{([^}]*)\}", spec)
    if choice and value not in choice.group(1).split(","):
        return f"is not one of {{{choice.group(1)}}}"
    bounds = re.search(r"in \[(\S+) - (\S+)\]", spec)
    if bounds and number is not None and not float(bounds.group(1)) <= number <= float(bounds.group(2)):
        return f"is outside [{bounds.group(1)}, {bounds.group(2)}]"
    return None


def check_server_flags(c, where, raw_args, env, options):
    """Every --flag[=value] in raw_args against the server's --help; values that the kubelet fills
    in from the pod at run time (env from valueFrom) are checked by name only."""
    runtime = {k for k, v in env.items() if isinstance(v, dict)}
    for raw in raw_args:
        if not raw.startswith("--"):
            continue
        name, has_value, value = raw[2:].partition("=")
        if not c.check(name in options, f"{where}: marlin-server has --{name} (see --help)"):
            continue
        if not has_value or any(f"$({v})" in value for v in runtime):
            continue
        problem = flag_value_problem(options[name], expand(value, env))
        c.check(problem is None,
                f"{where}: --{name}={expand(value, env)} {problem} (--help: {options[name]})")


def dockerfile_cmd(path):
    """The JSON-array CMD of a Dockerfile (its last one), or []."""
    cmd = []
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("CMD ["):
            cmd = json.loads(line[len("CMD "):])
    return cmd


def check_image(c, where, image):
    c.check("@sha256:" in image or (":" in image.rsplit("/", 1)[-1]
                                    and not image.endswith(":latest")),
            f"{where}: image {image!r} is pinned to a tag (not latest) or a digest")


def check_pod_security(c, where, pod_spec, container):
    pod_sc = pod_spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    c.check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot")
    c.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    c.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    c.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities drop ALL")
    c.check(pod_spec.get("automountServiceAccountToken") is False,
            f"{where}: no service account token mounted")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for res in ("cpu", "memory"):
            c.check(res in resources.get(kind, {}), f"{where}: resources.{kind}.{res} set")
    for res in ("cpu", "memory"):
        if res in resources.get("requests", {}) and res in resources.get("limits", {}):
            c.check(quantity(resources["requests"][res]) <= quantity(resources["limits"][res]),
                    f"{where}: {res} request <= limit")


def check_overlay(c, name, docs, adapter_metrics, exported, options=None):
    kind, gpu, backend = OVERLAYS[name]
    where = f"overlay {name}"
    for d in docs:
        c.check(d.get("metadata", {}).get("name"), f"{where}: every resource has a name")

    workloads = find(docs, "Deployment") + find(docs, "StatefulSet")
    if not c.check(len(workloads) == 1 and workloads[0]["kind"] == kind
                   and workloads[0]["metadata"]["name"] == WORKLOAD,
                   f"{where}: exactly one workload, a {kind} named {WORKLOAD}"):
        return
    w = workloads[0]
    pod = w["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    c.check(matches(w["spec"]["selector"].get("matchLabels"), labels),
            f"{where}: workload selector matches its pod labels")
    containers = {ct["name"]: ct for ct in spec["containers"]}
    if not c.check(CONTAINER in containers, f"{where}: container {CONTAINER!r}"):
        return
    ct = containers[CONTAINER]
    check_image(c, f"{where} {CONTAINER}", ct["image"])
    check_pod_security(c, f"{where} {CONTAINER}", spec, ct)

    ports = {p["name"]: p["containerPort"] for p in ct.get("ports", [])}
    c.check("grpc" in ports and "metrics" in ports, f"{where}: ports named grpc and metrics")
    grpc_port = ports.get("grpc")

    # Probes: kubelet's native gRPC probe on the gRPC port, the overall health service.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = ct.get(probe, {})
        c.check("grpc" in p, f"{where}: {probe} is a native gRPC probe")
        c.check(p.get("grpc", {}).get("port") == grpc_port, f"{where}: {probe} on the gRPC port")
        c.check(p.get("grpc", {}).get("service", "") in ("", "grpc.health.v1.Health"),
                f"{where}: {probe} asks the server's overall health")

    # Flags, with $(VAR)s expanded from the ConfigMap as the kubelet does.
    env = container_env(w, ct, docs)
    for source in ct.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        c.check(ref is None or find(docs, "ConfigMap", ref), f"{where}: ConfigMap {ref} exists")
    args = [expand(a, env) for a in ct.get("args", [])]
    if options is not None:
        check_server_flags(c, where, ct.get("args", []), env, options)
    for a in args:
        c.check("$(" not in a, f"{where}: argument {a!r} has every variable defined")
    flags = parse_flags(args)
    for flag in ("listen", "metrics-listen", "backend", "weights-dir", "drain-timeout",
                 "max-connection-age", "max-queue-delay-us"):
        c.check(flag in flags, f"{where}: --{flag} is passed")
    c.check(flags.get("backend") == backend, f"{where}: --backend={backend}")
    if "listen" in flags:
        c.check(not flags["listen"].startswith("127.") and port_of(flags["listen"]) == grpc_port,
                f"{where}: --listen on all interfaces at the gRPC port")
    if "metrics-listen" in flags:
        c.check(port_of(flags["metrics-listen"]) == ports.get("metrics"),
                f"{where}: --metrics-listen at the metrics port")
    c.check(float(flags.get("max-connection-age", 0)) > 0, f"{where}: a max connection age")

    # Graceful shutdown: preStop sleep, then SIGTERM and the drain, all inside the grace period.
    pre_stop = ct.get("lifecycle", {}).get("preStop", {})
    sleep = 0.0
    if "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    elif "exec" in pre_stop and "sleep" in pre_stop["exec"]["command"][0]:
        sleep = float(pre_stop["exec"]["command"][-1])
    c.check(sleep > 0, f"{where}: a preStop sleep lets endpoints update")
    drain = float(flags.get("drain-timeout", "inf"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    c.check(grace > sleep + drain,
            f"{where}: terminationGracePeriodSeconds {grace} > preStop {sleep} + drain {drain}")
    live = ct.get("livenessProbe", {})
    c.check(live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > drain,
            f"{where}: liveness tolerates NOT_SERVING for longer than a drain")

    # Weights: --weights-dir is a read-only mount of the weights PVC.
    mounts = {m["mountPath"]: m for m in ct.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mount = mounts.get(flags.get("weights-dir"))
    if c.check(mount is not None, f"{where}: --weights-dir is a volume mount"):
        c.check(mount.get("readOnly") is True, f"{where}: the weights mount is read-only")
        claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
        c.check(claim and find(docs, "PersistentVolumeClaim", claim),
                f"{where}: the weights volume is a PVC of this overlay")
    # A read-only root needs writable scratch space.
    c.check("/tmp" in mounts, f"{where}: /tmp is a writable volume")

    # GPU: nvidia.com/gpu: 1 in the limits of the GPU overlays, nowhere in the others.
    limits = ct.get("resources", {}).get("limits", {})
    if gpu:
        c.check(str(limits.get("nvidia.com/gpu")) == "1", f"{where}: limits nvidia.com/gpu: 1")
    else:
        c.check("nvidia.com/gpu" not in yaml.safe_dump_all(docs),
                f"{where}: no nvidia.com/gpu anywhere")

    # Services: a headless one (client-side round_robin) and a ClusterIP one, both on the pods.
    services = find(docs, "Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    cluster_ip = [s for s in services if s["spec"].get("clusterIP") != "None"
                  and s["spec"].get("type", "ClusterIP") == "ClusterIP"]
    c.check(len(headless) == 1, f"{where}: one headless Service (clusterIP: None)")
    c.check(len(cluster_ip) == 1, f"{where}: one ClusterIP Service")
    for s in services:
        sname = s["metadata"]["name"]
        c.check(matches(s["spec"].get("selector"), labels),
                f"{where}: Service {sname} selects the pods")
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            c.check(target in ports or target in ports.values(),
                    f"{where}: Service {sname} port {p['name']} targets a container port")
        c.check(any(p.get("targetPort") in ("grpc", grpc_port) for p in s["spec"]["ports"]),
                f"{where}: Service {sname} exposes gRPC")

    # PodDisruptionBudget on the pods.
    pdbs = find(docs, "PodDisruptionBudget")
    if c.check(len(pdbs) == 1, f"{where}: one PodDisruptionBudget"):
        pdb = pdbs[0]
        c.check(pdb["apiVersion"] == "policy/v1", f"{where}: PDB is policy/v1")
        c.check(matches(pdb["spec"]["selector"].get("matchLabels"), labels),
                f"{where}: PDB selects the pods")
        c.check("maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"],
                f"{where}: PDB sets a budget")

    # ServiceMonitor: scrapes the metrics port through the ClusterIP Service.
    monitors = find(docs, "ServiceMonitor")
    if c.check(len(monitors) == 1, f"{where}: one ServiceMonitor"):
        sm = monitors[0]
        selected = [s for s in services
                    if matches(sm["spec"]["selector"].get("matchLabels"), s["metadata"]["labels"])]
        c.check(len(selected) == 1 and selected[0] in cluster_ip,
                f"{where}: ServiceMonitor selects the ClusterIP Service only")
        if selected:
            names = {p["name"] for p in selected[0]["spec"]["ports"]}
            c.check(all(e.get("port") in names for e in sm["spec"]["endpoints"]),
                    f"{where}: ServiceMonitor endpoints name ports of the Service")
            c.check(any(e.get("port") == "metrics" for e in sm["spec"]["endpoints"]),
                    f"{where}: ServiceMonitor scrapes the metrics port")

    hpas = find(docs, "HorizontalPodAutoscaler")
    if kind == "Deployment":
        if c.check(len(hpas) == 1, f"{where}: one HorizontalPodAutoscaler"):
            check_hpa(c, where, hpas[0], w, flags, pdbs, adapter_metrics)
    else:
        c.check(not hpas, f"{where}: no autoscaler (the shard count is fixed)")
        check_sharding(c, where, w, flags, env, headless, grpc_port)


def check_hpa(c, where, hpa, workload, flags, pdbs, adapter_metrics):
    c.check(hpa["apiVersion"] == "autoscaling/v2", f"{where}: HPA is autoscaling/v2")
    ref = hpa["spec"]["scaleTargetRef"]
    c.check(ref["kind"] == workload["kind"] and ref["name"] == workload["metadata"]["name"]
            and ref["apiVersion"] == workload["apiVersion"], f"{where}: HPA targets the workload")
    c.check("replicas" not in workload["spec"],
            f"{where}: the HPA alone sets the replica count (no spec.replicas)")
    c.check(hpa["spec"].get("minReplicas", 1) >= 2,
            f"{where}: HPA keeps >= 2 replicas (one may be disrupted)")
    metrics = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    if c.check(len(metrics) == 1, f"{where}: HPA scales on one per-pod metric"):
        m = metrics[0]["pods"]
        c.check(m["metric"]["name"] in adapter_metrics,
                f"{where}: HPA metric {m['metric']['name']} is served by prometheus-adapter "
                f"(rules serve {sorted(adapter_metrics)})")
        target = quantity(m["target"]["averageValue"])
        delay = float(flags.get("max-queue-delay-us", 0)) * 1e-6
        c.check(target > 2 * delay,
                f"{where}: queue-time target {target}s > 2 x --max-queue-delay-us ({delay}s)")


def check_sharding(c, where, sts, flags, env, headless, grpc_port):
    spec = sts["spec"]
    name = sts["metadata"]["name"]
    service = spec.get("serviceName")
    c.check(headless and service == headless[0]["metadata"]["name"],
            f"{where}: StatefulSet serviceName is the headless Service")
    c.check(spec.get("podManagementPolicy") == "Parallel", f"{where}: shards start in parallel")
    peers = [p for p in flags.get("shard-peers", "").split(",") if p]
    replicas = spec.get("replicas", 1)
    c.check(replicas >= 2 and len(peers) == replicas,
            f"{where}: --shard-peers lists {len(peers)} shards for {replicas} replicas")
    for i, peer in enumerate(peers):
        c.check(peer.startswith(f"{name}-{i}.{service}") and port_of(peer) == grpc_port,
                f"{where}: shard {i} is {name}-{i}.{service}:{grpc_port}, not {peer}")
    index = env.get("MARLIN_SHARD_INDEX")
    c.check(flags.get("shard-index") == "$(MARLIN_SHARD_INDEX)" or isinstance(index, dict),
            f"{where}: --shard-index comes from the pod")
    c.check(isinstance(index, dict) and "apps.kubernetes.io/pod-index"
            in index.get("fieldRef", {}).get("fieldPath", ""),
            f"{where}: the shard index is the pod's StatefulSet ordinal (pod-index label)")


def check_weights_loader(c, docs):
    where = "weights-loader"
    jobs = find(docs, "Job")
    if not c.check(len(jobs) == 1, f"{where}: one Job"):
        return
    spec = jobs[0]["spec"]["template"]["spec"]
    for ct in spec["containers"]:
        check_image(c, f"{where} {ct['name']}", ct["image"])
        check_pod_security(c, f"{where} {ct['name']}", spec, ct)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v]
    c.check(claims == ["marlin-weights"], f"{where}: writes the marlin-weights PVC")


def adapter_rules(c, docs):
    """The custom metric names the prometheus-adapter rules serve, and the series they read."""
    served, series = set(), set()
    maps = find(docs, "ConfigMap")
    if not c.check(len(maps) == 1 and "config.yaml" in maps[0]["data"],
                   "monitoring: a ConfigMap holding the adapter's config.yaml"):
        return served, series
    config = yaml.safe_load(maps[0]["data"]["config.yaml"])
    for rule in config.get("rules", []):
        served.add(rule["name"]["as"])
        series.update(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", rule["metricsQuery"]))
        c.check(all(k in rule["resources"]["overrides"] for k in ("namespace", "pod")),
                "monitoring: the rule maps namespace and pod labels to resources")
    return served, series


def exported_metrics(server_dir):
    """Metric names written as string literals in the server's sources (None if none exist yet)."""
    sources = [p for p in pathlib.Path(server_dir).rglob("*") if p.suffix in (".cc", ".h")]
    metrics_sources = [p for p in sources if "metrics" in p.parts]
    if not metrics_sources:
        return None
    text = "\n".join(p.read_text(errors="replace") for p in sources)
    return set(re.findall(r'"(marlin_[a-z0-9_]+)"', text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-dir", required=True, type=pathlib.Path)
    parser.add_argument("--server-sources", type=pathlib.Path,
                        help="server/ sources, to check the HPA metric is exported")
    parser.add_argument("--server-binary", type=pathlib.Path,
                        help="marlin-server, to check the flags the manifests pass against --help")
    parser.add_argument("--dockerfile", type=pathlib.Path, action="append", default=[],
                        help="a Dockerfile whose CMD passes marlin-server flags (repeatable)")
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        print("SKIP: kubectl is not installed (apt-get install kubectl)")
        return 77

    c = Checker()
    adapter_metrics, adapter_series = adapter_rules(c, render(args.k8s_dir / "monitoring"))
    bases = {re.sub(r"_(sum|count|bucket)$", "", s) for s in adapter_series}
    c.check(bases == {QUEUE_METRIC}, f"monitoring: the rule reads {QUEUE_METRIC} (reads {bases})")
    exported = exported_metrics(args.server_sources) if args.server_sources else None
    if exported is None:
        print(f"NOTE: no server metrics sources yet; not checking that {QUEUE_METRIC} is exported")
    else:
        c.check(QUEUE_METRIC in exported,
                f"server: exports the histogram {QUEUE_METRIC} that the HPA scales on")

    options = None
    if args.server_binary is None or not args.server_binary.exists():
        print(f"NOTE: no marlin-server binary ({args.server_binary}); flags not checked")
    else:
        options = server_help(args.server_binary)
        c.check(len(options) > 10, f"server: --help of {args.server_binary} lists its options")
        for dockerfile in args.dockerfile:
            check_server_flags(c, f"{dockerfile.name} CMD", dockerfile_cmd(dockerfile), {}, options)

    for overlay in OVERLAYS:
        docs = render(args.k8s_dir / "overlays" / overlay)
        check_overlay(c, overlay, docs, adapter_metrics, exported, options)
    check_weights_loader(c, render(args.k8s_dir / "weights-loader"))

    print(f"{c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
