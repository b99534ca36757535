"""PodIndex against an API-server double, through the real kubernetes client; label selectors;
selector -> cgroup paths."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from bpfscope.errors import BpfscopeError, UsageError
from bpfscope.k8s.cgroups import CgroupResolver
from bpfscope.k8s.pods import (
    K8sError,
    PodIndex,
    PodMeta,
    SelectorError,
    matches,
    parse_selector,
    pod_labels,
    pod_meta,
    strip_container_id,
)
from tests.k8s_double import ApiServerDouble, make_pod


def cid(n: int) -> str:
    return f"{n:064x}"


def eventually(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    assert cond(), f"timed out waiting for {what}"


@pytest.fixture
def api():
    with ApiServerDouble() as d:
        yield d


@pytest.fixture
def make_index(api):
    made = []

    def make(node="node-a", **kw):
        kw.setdefault("backoff", (0.05, 0.2))
        idx = PodIndex(node, api_client=api.api_client(), **kw)
        made.append(idx)
        return idx

    yield make
    for idx in made:
        idx.stop()


def started(idx: PodIndex) -> PodIndex:
    idx.start()
    assert idx.wait_synced(10)
    return idx


# --------------------------------------------------------------------------------------------------
# list + watch


def test_list_keeps_this_nodes_pods_with_container_names(api, make_index):
    web = api.add_pod("web-1", "shop", labels={"app": "web"},
                      containers={"nginx": cid(1), "sidecar": cid(2)}, init_containers={"setup": cid(3)})
    crio = api.add_pod("db-0", "shop", runtime="cri-o", containers={"pg": cid(4)})
    dock = api.add_pod("old", "legacy", runtime="docker", containers={"app": cid(5), "late": None})
    api.add_pod("elsewhere", "shop", node="node-b", containers={"x": cid(6)})
    idx = started(make_index())
    assert {m.name for m in idx.pods()} == {"web-1", "db-0", "old"}
    meta = idx.get(web["metadata"]["uid"])
    assert meta == PodMeta("shop", "web-1", web["metadata"]["uid"], {"app": "web"},
                           {cid(1): "nginx", cid(2): "sidecar", cid(3): "setup"})
    assert idx.get(crio["metadata"]["uid"]).containers == {cid(4): "pg"}  # cri-o:// stripped
    assert idx.get(dock["metadata"]["uid"]).containers == {cid(5): "app"}  # docker:// stripped, not started skipped
    # what the client asked for
    lst = api.list_requests()
    assert len(lst) == 1 and lst[0]["query"]["fieldSelector"] == "spec.nodeName=node-a"
    eventually(lambda: api.watch_requests(), what="watch request")
    w = api.watch_requests()[0]["query"]
    assert w["fieldSelector"] == "spec.nodeName=node-a"
    assert w["resourceVersion"] == idx.resource_version == api.resource_version
    assert "timeoutSeconds" in w


def test_watch_added_modified_deleted(api, make_index):
    idx = started(make_index())
    assert len(idx) == 0
    eventually(lambda: api.open_watches == 1, what="watch open")
    pod = api.add_pod("api-7f9", "prod", labels={"app": "api"}, containers={"api": None})
    uid = pod["metadata"]["uid"]
    eventually(lambda: idx.get(uid) is not None, what="ADDED")
    assert idx.get(uid).containers == {}
    assert idx.lookup(uid, cid(9)) == {"namespace": "prod", "pod": "api-7f9", "container": cid(9)}
    api.modify_pod("api-7f9", "prod", labels={"app": "api", "v": "2"}, containers={"api": cid(9)})
    eventually(lambda: idx.get(uid).containers == {cid(9): "api"}, what="MODIFIED")
    assert idx.get(uid).labels == {"app": "api", "v": "2"}
    assert idx.lookup(uid, cid(9)) == {"namespace": "prod", "pod": "api-7f9", "container": "api"}
    assert idx.lookup(uid.replace("-", "_"), "containerd://" + cid(9))["container"] == "api"
    assert idx.lookup_cgroup(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/"
        f"cri-containerd-{cid(9)}.scope") == {"namespace": "prod", "pod": "api-7f9", "container": "api"}
    api.delete_pod("api-7f9", "prod")
    eventually(lambda: idx.get(uid) is None, what="DELETED")
    assert idx.lookup(uid, cid(9)) == {"namespace": "", "pod": "", "container": cid(9)}
    assert idx.resource_version == api.resource_version
    assert idx.relists == 1


def test_pod_recreated_under_same_name_gets_new_uid(api, make_index):
    old = api.add_pod("job-x", "batch", containers={"c": cid(1)})
    idx = started(make_index())
    eventually(lambda: api.open_watches == 1, what="watch open")
    api.delete_pod("job-x", "batch")
    new = api.add_pod("job-x", "batch", containers={"c": cid(2)})
    old_uid, new_uid = old["metadata"]["uid"], new["metadata"]["uid"]
    eventually(lambda: idx.get(new_uid) is not None, what="new pod")
    assert idx.get(old_uid) is None
    assert idx.lookup(old_uid, cid(1)) == {"namespace": "", "pod": "", "container": cid(1)}
    assert idx.lookup(new_uid, cid(2)) == {"namespace": "batch", "pod": "job-x", "container": "c"}
    assert [m.uid for m in idx.pods()] == [new_uid]


def test_same_name_new_uid_without_delete_event_replaces_old(make_index):
    # events can't arrive in this order from one watch, but an index must never map two uids to a name
    idx = make_index()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())


    idx._apply("ADDED", make_pod("p", "ns", uid=a))
    idx._apply("ADDED", make_pod("p", "ns", uid=b))
    assert idx.get(a) is None and idx.get(b).name == "p"


def test_watch_resumes_from_resource_version(api, make_index):
    a = api.add_pod("a", containers={"c": cid(1)})
    idx = started(make_index())
    eventually(lambda: api.open_watches == 1, what="watch open")
    rv_before = api.resource_version
    eventually(lambda: idx.resource_version == rv_before, what="caught up")
    api.pause()  # changes now are a gap the client must fetch by resuming
    b = api.add_pod("b", containers={"c": cid(2)})
    api.modify_pod("a", labels={"x": "y"})
    api.drop_watches()
    api.resume()
    eventually(lambda: idx.get(b["metadata"]["uid"]) is not None, what="gap event b")
    eventually(lambda: idx.get(a["metadata"]["uid"]).labels == {"x": "y"}, what="gap event a")
    resumed = [w["query"].get("resourceVersion") for w in api.watch_requests()]
    assert resumed[0] == rv_before and rv_before in resumed[1:]  # resumed, no synthetic replay
    assert idx.relists == 1 and len(api.list_requests()) == 1


def test_410_gone_relists(api, make_index):
    a = api.add_pod("a", containers={"c": cid(1)})
    gone = api.add_pod("gone", containers={"c": cid(2)})
    idx = started(make_index())
    eventually(lambda: api.open_watches == 1, what="watch open")
    api.pause()
    api.delete_pod("a")
    a2 = api.add_pod("a", containers={"c": cid(3)})  # same name, new uid, inside the gap
    api.delete_pod("gone")
    c = api.add_pod("c", containers={"c": cid(4)})
    api.compact()  # history gone: resuming gets 410
    api.resume()
    eventually(lambda: idx.relists == 2, what="relist after 410")
    assert len(api.list_requests()) == 2
    assert {m.name: m.uid for m in idx.pods()} == {"a": a2["metadata"]["uid"], "c": c["metadata"]["uid"]}
    assert idx.get(a["metadata"]["uid"]) is None and idx.get(gone["metadata"]["uid"]) is None
    assert idx.lookup(a2["metadata"]["uid"], cid(3))["container"] == "c"
    # and it watches on from the relist's resourceVersion
    eventually(lambda: api.open_watches == 1, what="watch reopened")
    d = api.add_pod("d")
    eventually(lambda: idx.get(d["metadata"]["uid"]) is not None, what="event after relist")
    assert idx.relists == 2


def test_pod_bound_to_node_arrives_as_added(api, make_index):
    idx = started(make_index())
    eventually(lambda: api.open_watches == 1, what="watch open")
    p = api.add_pod("pending", node=None)
    other = api.add_pod("other-node", node="node-b")
    api.modify_pod("pending", node="node-a", containers={"c": cid(7)})
    eventually(lambda: idx.get(p["metadata"]["uid"]) is not None, what="bound pod")
    assert idx.get(p["metadata"]["uid"]).containers == {cid(7): "c"}
    assert idx.get(other["metadata"]["uid"]) is None


def test_retries_after_api_errors(api, make_index):
    api.add_pod("a")
    api.fail_lists = 2
    idx = started(make_index())
    assert len(api.list_requests()) == 3
    assert "500" in str(idx.last_error) and len(idx) == 1


def test_stop_ends_thread_blocked_in_watch(api, make_index):
    idx = started(make_index(watch_timeout=300))
    eventually(lambda: api.open_watches == 1, what="watch open")
    thread = idx._thread
    t0 = time.monotonic()
    idx.stop()
    assert not thread.is_alive() and time.monotonic() - t0 < 3


def test_static_pod_found_by_config_hash(api, make_index):
    h = "6c2f7b9e3d1a4c5b8e0f2a3b4c5d6e7f"
    mirror = api.add_pod("etcd-node-a", "kube-system", containers={"etcd": cid(8)},
                         annotations={"kubernetes.io/config.mirror": h, "kubernetes.io/config.hash": h})
    idx = started(make_index())
    assert idx.get(h).uid == mirror["metadata"]["uid"]
    assert idx.lookup_cgroup(f"/kubepods/pod{h}/{cid(8)}") == {
        "namespace": "kube-system", "pod": "etcd-node-a", "container": "etcd"}


def test_node_name_from_env_and_kubeconfig(api, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("NODE_NAME", "node-z")
    api.add_pod("here", node="node-z")
    idx = PodIndex(backoff=(0.05, 0.2))
    try:
        assert idx.node_name == "node-z"
        assert started(idx).pods()[0].name == "here"
    finally:
        idx.stop()
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(K8sError, match="NODE_NAME"):
        PodIndex()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(K8sError, match="no Kubernetes API configuration"):
        PodIndex("node-z")
    assert issubclass(K8sError, BpfscopeError)


# --------------------------------------------------------------------------------------------------
# lookups without API


def test_fallback_labels():
    assert pod_labels(None, str(uuid.uuid4()), "containerd://" + cid(1)) == {
        "namespace": "", "pod": "", "container": cid(1)}
    assert pod_labels(None, None, None) == {"namespace": "", "pod": "", "container": ""}
    for prefix in ("containerd://", "docker://", "cri-o://", ""):
        assert strip_container_id(prefix + cid(3)) == cid(3)
    assert strip_container_id(None) == ""


def test_pod_meta_tolerates_sparse_objects():
    assert pod_meta({}) == PodMeta("", "", "")
    m = pod_meta({"metadata": {"uid": "U", "name": "n", "namespace": "ns", "labels": None},
                  "status": {"containerStatuses": [{"name": "c", "containerID": "containerd://" + cid(1),
                                                    "lastState": {"terminated": {"containerID": "containerd://" + cid(2)}}}]}})
    assert m.uid == "u" and m.containers == {cid(1): "c", cid(2): "c"}


def test_unknown_uid_and_container(make_index):
    idx = make_index()


    idx._apply("ADDED", make_pod("p", "ns", uid="11111111-2222-3333-4444-555555555555", containers={"c": cid(1)}))
    assert idx.lookup("11111111-2222-3333-4444-555555555555", cid(2)) == {"namespace": "ns", "pod": "p",
                                                                         "container": cid(2)}
    assert idx.lookup("99999999-2222-3333-4444-555555555555", cid(1)) == {"namespace": "", "pod": "",
                                                                         "container": cid(1)}
    assert idx.lookup(None, None) == {"namespace": "", "pod": "", "container": ""}


# --------------------------------------------------------------------------------------------------
# label selectors

LABELS = {"app": "web", "tier": "frontend", "env": "prod", "example.com/team": "a-b.c_d"}

SELECTORS = [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app = web", True),
    ("app=db", False),
    ("app!=db", True),
    ("app!=web", False),
    ("missing!=x", True),  # != matches absent labels
    ("env in (prod,staging)", True),
    ("env in ( staging , prod )", True),
    ("env in (dev)", False),
    ("env notin (dev,test)", True),
    ("env notin (prod)", False),
    ("missing notin (x)", True),
    ("missing in (x)", False),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("! app", False),
    ("!app", False),
    ("app=web,tier!=db,env in (prod,staging),!canary", True),
    ("app=web,tier!=frontend", False),
    ("example.com/team=a-b.c_d", True),
    ("example.com/team in (a-b.c_d, x)", True),
    ("app=web, missing", False),
    ("tier in (frontend),env", True),
    ("empty=", False),
]


@pytest.mark.parametrize(("selector", "expected"), SELECTORS)
def test_label_selector(selector, expected):
    assert matches(selector, LABELS) is expected
    assert matches(parse_selector(selector), LABELS) is expected


def test_label_selector_empty_value():
    assert matches("empty=", {"empty": ""})
    assert not matches("empty!=", {"empty": ""})


@pytest.mark.parametrize("bad", [
    "app=web,", ",", "a=b=c", "a in (x", "a in x)", "a in ()", "a in (x,)", "a in ((x))",
    "=x", "a b", "a=b c", "-a=b", "a=-b", "!", "a in (x y)", "a<b", "!a=b",
])
def test_label_selector_errors(bad):
    with pytest.raises(SelectorError):
        parse_selector(bad)
    assert issubclass(SelectorError, UsageError)


# --------------------------------------------------------------------------------------------------
# selector -> cgroups


@pytest.fixture
def cgroup_tree(tmp_path):
    """A cgroup-like directory tree; CgroupResolver walks it as it would the v2 mount."""
    uids = {n: str(uuid.uuid4()) for n in ("web-1", "web-2", "db-0", "canary")}
    static_hash = "6c2f7b9e3d1a4c5b8e0f2a3b4c5d6e7f"

    def mk(rel):
        (tmp_path / rel).mkdir(parents=True)
        return "/" + rel

    paths = {
        "web-1": mk(f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uids['web-1'].replace('-', '_')}.slice"),
        "web-2": mk(f"kubepods.slice/kubepods-pod{uids['web-2'].replace('-', '_')}.slice"),
        "db-0": mk(f"kubepods/besteffort/pod{uids['db-0']}"),
        "canary": mk(f"kubepods/burstable/pod{uids['canary']}"),
        "etcd": mk(f"kubepods/pod{static_hash}"),
    }
    for name in ("web-1", "web-2"):
        mk(paths[name][1:] + f"/cri-containerd-{cid(len(name))}.scope")
    mk(paths["db-0"][1:] + "/" + cid(99))
    mk("system.slice/sshd.service")
    return tmp_path, uids, static_hash, paths


def pods_for(api, uids, static_hash):
    api.add_pod("web-1", "shop", uid=uids["web-1"], labels={"app": "web", "env": "prod"})
    api.add_pod("web-2", "shop", uid=uids["web-2"], labels={"app": "web", "env": "staging"})
    api.add_pod("db-0", "shop", uid=uids["db-0"], labels={"app": "db", "env": "prod"})
    api.add_pod("canary", "test", uid=uids["canary"], labels={"app": "web", "env": "prod", "canary": "1"})
    api.add_pod("etcd-node-a", "kube-system", labels={"component": "etcd"},
                annotations={"kubernetes.io/config.mirror": static_hash})
    api.add_pod("gone", "shop", labels={"app": "web"})  # no cgroup on this node (yet)


def test_selector_to_cgroups(api, make_index, cgroup_tree):
    root, uids, static_hash, paths = cgroup_tree
    pods_for(api, uids, static_hash)
    idx = started(make_index(resolver=CgroupResolver(str(root))))
    s2c = idx.selector_to_cgroups
    assert s2c() == sorted(paths.values())
    assert s2c(namespace="shop") == sorted([paths["web-1"], paths["web-2"], paths["db-0"]])
    assert s2c(namespace="shop", pod="db-0") == [paths["db-0"]]
    assert s2c(pod="canary") == [paths["canary"]]
    assert s2c(selector="app=web") == sorted([paths["web-1"], paths["web-2"], paths["canary"]])
    assert s2c(selector="app=web,env in (prod),!canary") == [paths["web-1"]]
    assert s2c(selector="env notin (prod)") == sorted([paths["web-2"], paths["etcd"]])
    assert s2c(namespace="shop", selector="app!=web") == [paths["db-0"]]
    assert s2c(selector="component=etcd") == [paths["etcd"]]  # static pod via its config hash
    assert s2c(namespace="nope") == []
    assert s2c(pod="gone") == []
    with pytest.raises(SelectorError):
        s2c(selector="app in (")


def test_selector_to_cgroups_one_shot_without_thread(api, make_index, cgroup_tree):
    root, uids, static_hash, paths = cgroup_tree
    pods_for(api, uids, static_hash)
    idx = make_index(resolver=CgroupResolver(str(root)))
    assert idx.selector_to_cgroups(namespace="test") == [paths["canary"]]
    assert idx.relists == 1 and idx._thread is None and not api.watch_requests()


def test_selector_to_cgroups_new_pod_cgroup_found(api, make_index, cgroup_tree):
    root, uids, static_hash, paths = cgroup_tree
    idx = started(make_index(resolver=CgroupResolver(str(root), min_refresh_interval=3600)))
    assert idx.selector_to_cgroups() == []
    eventually(lambda: api.open_watches == 1, what="watch open")
    new = api.add_pod("new", "shop", labels={"app": "new"})
    uid = new["metadata"]["uid"]
    os.makedirs(root / f"kubepods/burstable/pod{uid}")
    eventually(lambda: idx.get(uid) is not None, what="new pod")
    assert idx.selector_to_cgroups(selector="app=new") == [f"/kubepods/burstable/pod{uid}"]
