"""cgnet on the real kernel: two cgroups that mimic pods (systemd Burstable, cgroupfs Guaranteed)
exchange known byte counts over TCP; the per-cgroup counters must match what was sent.

Bytes are L3 on the wire (IP + TCP headers + payload). Truth per direction: the payload the
peers confirmed plus 52 header bytes (IPv4 20 + TCP 20 + timestamps 12) for every packet the
tool counted; SYN/SYN-ACK carry 8 more, a few bytes in megabytes. On loopback (MTU 65536)
headers are ~0.1% of the bytes, so the payload alone is also within 2%. Over a veth pair with
MTU 1500 they are 3.5%: there the header term is what makes the 2% hold, and it checks that
GSO aggregates are counted per segment.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import uuid

import pytest

from bpfscope.bpf.object import program_names
from tests.helpers import ROOT, ToolProcess, run_cli
from tests.netpeers import TCP_IPV4_HEADER, PodCgroups, exchange

pytestmark = pytest.mark.bpf
READY_TIMEOUT = 60.0  # seconds; start-up takes far longer in the kernel-matrix VM (TCG) than here

UID_B = "3f1e2d4c-5b6a-4798-8a0b-1c2d3e4f5a6b"
UID_G = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d"
UID_E = "11111111-2222-4333-8444-555566667777"
CID_B = "b" * 64
CID_G = "c0ffee" + "1" * 58
CID_E = "e" * 64
BURSTABLE = (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_B.replace('-', '_')}.slice/"
             f"cri-containerd-{CID_B}.scope")
GUARANTEED = f"kubepods/pod{UID_G}/{CID_G}"
BESTEFFORT = f"kubepods/besteffort/pod{UID_E}/{CID_E}"
CGNET_PROGS = {"cgnet_ingress", "cgnet_egress", "cgnet_rmdir"}


@pytest.fixture
def pods():
    t = PodCgroups()
    try:
        yield t
    finally:
        t.cleanup()


def totals(lines: list[dict]) -> dict[str, dict]:
    """Per cgroup path: interval deltas summed over every table; 'removed_rows' counts rows marked removed."""
    out: dict[str, dict] = {}
    for rec in lines:
        if rec.get("type") != "rates":
            continue
        for row in rec["rows"]:
            t = out.setdefault(row["cgroup"], {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0,
                                               "removed_rows": 0, "tables": [], "row": row})
            for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
                t[k] += row[k]
            t["removed_rows"] += bool(row["removed"])
            t["tables"].append(rec["timestamp"])
            t["row"] = row
    return out


def within(value: float, truth: float, rel: float) -> bool:
    return abs(value - truth) <= rel * truth


def check_tx(tx: dict, payload: int, retrans: int = 0) -> None:
    """tx's cgroup sent `payload` bytes (plus acks for data it received), `retrans` of them twice
    (a loaded machine drops on loopback too)."""
    assert tx["tx_packets"] > 0
    truth = payload + retrans + TCP_IPV4_HEADER * tx["tx_packets"]
    assert within(tx["tx_bytes"], truth, 0.02), (tx["tx_bytes"], truth)


def check_rx(rx: dict, payload: int, retrans: int = 0) -> None:
    """rx's cgroup received `payload` bytes; of the sender's retransmissions it saw between none
    (first copy lost before its ingress hook) and all (spurious retransmission)."""
    assert rx["rx_packets"] > 0
    low = payload + TCP_IPV4_HEADER * rx["rx_packets"]
    assert low * 0.98 <= rx["rx_bytes"] <= (low + retrans) * 1.02, (rx["rx_bytes"], low, retrans)


def check_direction(tx: dict, rx: dict, payload: int, retrans: int = 0) -> None:
    check_tx(tx, payload, retrans)
    check_rx(rx, payload, retrans)
    assert rx["rx_bytes"] <= tx["tx_bytes"] * 1.005 + 1000  # nothing arrives that was not sent


def test_two_pods_rx_tx_match_what_was_sent(pods):
    a_cg, b_cg = pods.make(BURSTABLE), pods.make(GUARANTEED)
    idle_cg = pods.make(BESTEFFORT)
    tool = ToolProcess("cgnet", "--json", "-i", "0.25", "--cgroup", pods.top).ready(READY_TIMEOUT)
    a, b = pods.peer(a_cg), pods.peer(b_cg)
    pods.peer(idle_cg)  # a third pod: listens, never talks
    n_ab, n_ba = 3_000_000, 1_250_000
    re_ab, re_ba = exchange(a, b, n_ab, n_ba)
    time.sleep(0.4)
    tool.stop()
    assert tool.proc.returncode == 0, tool.stderr
    got = totals(tool.json_lines())
    assert set(got) == {a_cg, b_cg}, f"charged cgroups: {sorted(got)}"  # not the idle pod, not pod parents
    A, B = got[a_cg], got[b_cg]
    check_direction(A, B, n_ab, re_ab)
    check_direction(B, A, n_ba, re_ba)
    # loopback: headers are far below 2% of the payload
    assert within(A["tx_bytes"], n_ab + re_ab, 0.02) and within(B["tx_bytes"], n_ba + re_ba, 0.02)
    assert A["tx_packets"] >= n_ab // 65483
    # labels parsed from the path: container ids for both cgroup drivers
    assert A["row"]["container"] == CID_B and B["row"]["container"] == CID_G
    assert not A["row"]["removed"] and not B["row"]["removed"]
    summary = tool.json_lines()[-1]
    assert summary["type"] == "summary" and summary["lost_events"] == 0


def test_removed_cgroup_reported_once_then_dropped(pods):
    a_cg, b_cg = pods.make("kubepods/burstable/pod" + str(uuid.uuid4()) + "/" + "a" * 64), pods.make("other")
    tool = ToolProcess("cgnet", "--json", "-i", "0.2", "--cgroup", pods.top).ready(READY_TIMEOUT)
    a, b = pods.peer(a_cg), pods.peer(b_cg)
    re_ab, re_ba = exchange(a, b, 400_000, 100_000)
    a.close()
    pods.peers.remove(a)
    pods.remove(a_cg)
    time.sleep(0.2)
    b.send("127.0.0.1", b.port, 50_000)  # traffic goes on after the removal (b to itself)
    assert int(b.expect("sent")) == 50_000 and int(b.expect("got")) == 50_000
    time.sleep(0.7)  # a few more intervals
    tool.stop()
    lines = tool.json_lines()
    got = totals(lines)
    A = got[a_cg]
    assert A["removed_rows"] == 1, "a removed cgroup is reported exactly once as removed"
    last_a = max(A["tables"])
    later = [rec for rec in lines if rec.get("type") == "rates" and rec["timestamp"] > last_a]
    assert later, "no interval after the removal was printed"
    assert all(r["cgroup"] != a_cg for rec in later for r in rec["rows"]), "removed cgroup still reported"
    assert A["row"]["removed"] is True
    check_tx(A, 400_000, re_ab)  # its final counts were not lost
    check_rx(A, 100_000, re_ba)
    summary = lines[-1]
    assert summary["cgroups removed while counting"] >= 1


def test_text_output_bcc_style(pods):
    a_cg, b_cg = pods.make("x"), pods.make("y")
    tool = ToolProcess("cgnet", "-i", "0.3", "--cgroup", pods.top).ready(READY_TIMEOUT)
    a, b = pods.peer(a_cg), pods.peer(b_cg)
    exchange(a, b, 200_000, 0)
    time.sleep(0.4)
    tool.stop()
    lines = tool.stdout.splitlines()
    assert lines[0].split() == ["RX_PKTS", "TX_PKTS", "RX_BYTES", "TX_BYTES", "RX_KB/s", "TX_KB/s", "CGROUP"]
    rows = [ln.split() for ln in lines if ln.rstrip().endswith(a_cg)]
    assert rows and sum(int(r[3]) for r in rows) >= 200_000
    assert "cgroup_skb mode" in tool.stderr and "Traceback" not in tool.stderr


def test_gso_over_veth_counts_wire_packets_and_bytes(pods):
    """Pods in two network namespaces joined by a veth pair (MTU 1500): TSO/GSO skbs of ~45
    segments; bytes must include every segment's headers, packets must be wire packets."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"bpfscope-a-{tag}", f"bpfscope-b-{tag}"
    ve_a, ve_b = f"bsa{tag}", f"bsb{tag}"
    sh = lambda *c: subprocess.run(c, check=True, capture_output=True)  # noqa: E731
    try:
        sh("ip", "netns", "add", ns_a)
        sh("ip", "netns", "add", ns_b)
        sh("ip", "link", "add", ve_a, "netns", ns_a, "type", "veth", "peer", "name", ve_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, ve_a, "10.251.0.1/24"), (ns_b, ve_b, "10.251.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up", "mtu", "1500")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        a_cg, b_cg = pods.make(BURSTABLE), pods.make(GUARANTEED)
        tool = ToolProcess("cgnet", "--json", "-i", "0.25", "--cgroup", pods.top).ready(READY_TIMEOUT)
        a = pods.peer(a_cg, "10.251.0.1", netns=ns_a)
        b = pods.peer(b_cg, "10.251.0.2", netns=ns_b)
        n_ab, n_ba = 4_000_000, 1_000_000
        re_ab, re_ba = exchange(a, b, n_ab, n_ba, host_a="10.251.0.1", host_b="10.251.0.2")
        time.sleep(0.4)
        tool.stop()
        got = totals(tool.json_lines())
        A, B = got[a_cg], got[b_cg]
        check_direction(A, B, n_ab, re_ab)
        check_direction(B, A, n_ba, re_ba)
        mss = 1500 - TCP_IPV4_HEADER
        assert A["tx_packets"] >= n_ab // mss, "GSO aggregates must count as their wire packets"
        assert A["tx_bytes"] > (n_ab + re_ab) * 1.03, "headers of every segment are counted"
    finally:
        for p in pods.peers:
            p.close()
        pods.peers.clear()
        subprocess.run(["ip", "netns", "del", ns_a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns_b], capture_output=True)


def assert_released(ids: set[int], timeout: float = 3.0) -> None:
    """The kernel frees a program after an RCU grace period once its last fd and link are gone."""
    deadline = time.monotonic() + timeout
    while set(program_names()) & ids and time.monotonic() < deadline:
        time.sleep(0.05)
    left = set(program_names()) & ids
    assert not left, f"programs still loaded {timeout}s after exit: {left}"


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (its fdinfo says prog_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _attached_at(cgroup_fs: str) -> str:
    return subprocess.run(["bpftool", "cgroup", "show", cgroup_fs], capture_output=True, text=True).stdout


def test_coexists_with_other_programs_and_second_run(pods, tmp_path):
    """A program attached the legacy way with BPF_F_ALLOW_MULTI (as systemd does) below the root,
    and a second cgnet run at the root: everyone keeps running, every run counts everything."""
    pin = f"/sys/fs/bpf/bpfscope-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["bpftool", "prog", "loadall", str(ROOT / "bpfscope/tools/cgnet.bpf.o"), pin], check=True)
    top_fs = pods.fs(pods.top)
    try:
        subprocess.run(["bpftool", "cgroup", "attach", top_fs, "egress", "pinned", f"{pin}/cgnet_egress", "multi"],
                       check=True)
        a_cg, b_cg = pods.make("a"), pods.make("b")
        one = ToolProcess("cgnet", "--json", "-i", "0.3", "--cgroup", pods.top).ready(READY_TIMEOUT)
        two = ToolProcess("cgnet", "--json", "-i", "0.3", "--cgroup", pods.top).ready(READY_TIMEOUT)
        a, b = pods.peer(a_cg), pods.peer(b_cg)
        re_ab, _ = exchange(a, b, 500_000, 0)
        time.sleep(0.4)
        one.stop()
        two.stop()
        t1, t2 = totals(one.json_lines()), totals(two.json_lines())
        for t in (t1, t2):
            check_direction(t[a_cg], t[b_cg], 500_000, re_ab)
        assert t1[a_cg]["tx_bytes"] == t2[a_cg]["tx_bytes"]
        assert "cgnet_egress" in _attached_at(top_fs), "the other program was detached"
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", top_fs, "egress", "pinned", f"{pin}/cgnet_egress"],
                       capture_output=True)
        subprocess.run(["rm", "-rf", pin])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_detaches_everything(sig):
    tool = ToolProcess("cgnet", "-i", "10").ready(READY_TIMEOUT)
    mine = {i for i in prog_ids_of(tool.proc.pid) if program_names({i}).get(i) in CGNET_PROGS}
    assert len(mine) == 3
    took = tool.stop(sig)
    assert tool.proc.returncode == 0, tool.stderr
    assert "Traceback" not in tool.stderr
    assert took < 2.0, f"exit took {took:.2f}s"
    assert_released(mine)


def test_map_full_counts_lost_packets():
    """More cgroups than the map holds: packets of the ones left out are counted, not dropped silently."""
    import socket

    from bpfscope.tools.cgnet import CgnetBpf

    with CgnetBpf(max_cgroups=64) as bpf:
        me = os.stat(f"/proc/{os.getpid()}/").st_ino  # not a cgroup id: just fill with ids no socket has
        for i in range(64):
            bpf.counters.update((1 << 62) + me + i, bytes(32))
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        c.sendall(b"x" * 1000)
        s.recv(1000)
        for x in (c, s, srv):
            x.close()
        assert bpf.lost() > 0
        assert len(bpf.read_all()) == 64


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--cgroup", "/no/such/cgroup-here"], "no such cgroup"),
        (["--cgroup", "x", "--namespace", "y"], "cannot be combined"),
        (["--max-cgroups", "1"], "minimum"),
        (["--selector", "a in (b"], "selector"),
        (["-i", "abc"], "interval"),
        (["--cgroup", "../etc"], "cgroup"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli("cgnet", *args, "-d", "0.1")
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_sweep_finds_cgroups_removed_without_an_event(pods):
    """A cgroup whose first packet is counted after its removal sends no rmdir event for us: the
    sweep (by file handle) finds it, it is reported once with its counts, then dropped."""
    from bpfscope.k8s.filters import CgroupLabeler
    from bpfscope.tools.cgnet import CgnetBpf, CgroupTraffic

    dead_cg, alive_cg = pods.make("dead"), pods.make("alive")
    dead, alive = os.stat(pods.fs(dead_cg)).st_ino, os.stat(pods.fs(alive_cg)).st_ino
    pods.remove(dead_cg)
    with CgnetBpf(max_cgroups=1024) as bpf:
        ct = bpf.obj.struct("counters")
        other_cpus = bytes(bpf.counters._value_len() - ctypes.sizeof(ct))  # per-CPU map: CPU 0 only
        bpf.counters.update(dead, bytes(ct(tx_packets=3, tx_bytes=300)) + other_cpus)
        bpf.counters.update(alive, bytes(ct(rx_packets=1, rx_bytes=100)) + other_cpus)
        labeler = CgroupLabeler()
        traffic = CgroupTraffic(bpf, labeler, sweep_interval=0.05)
        time.sleep(0.06)
        live, gone = traffic.poll()
        assert gone == {dead: (0, 0, 3, 300)}
        assert live[alive] == (1, 100, 0, 0) and labeler.name(alive) == alive_cg
        time.sleep(0.06)
        live, gone = traffic.poll()
        assert dead not in live and not gone
        assert dead not in bpf.read_all(), "dropped from the map"
        assert traffic.removed_total == 1
