"""tcplife on the real kernel: loopback sessions with known byte counts, IPv4 and IPv6, both
close orders; the client runs in a child process so each side has its own pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import ToolProcess, run_cli

pytestmark = pytest.mark.bpf

# client: for each "host port nsend close_first" line on stdin, connect, send nsend bytes,
# then (close_first) shut down writing and read to EOF, or read to EOF and then close.
# Prints "lport received" for each session.
CLIENT = r"""
import socket, sys
for line in sys.stdin:
    host, port, nsend, close_first = line.split()
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    c = socket.socket(fam)
    c.connect((host, int(port)))
    c.sendall(b'c' * int(nsend))
    if close_first == '1':
        c.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    lport = c.getsockname()[1]
    c.close()
    print(lport, got, flush=True)
"""

SESSIONS = [  # family host, bytes client->server, bytes server->client, client closes first
    ("127.0.0.1", 300_000, 70_000, True),
    ("127.0.0.1", 5_000, 1_200_000, False),
    ("::1", 777_777, 12_345, True),
    ("::1", 64_000, 256_000, False),
]


def _serve(listener: socket.socket, nrecv: int, nsend: int, client_closes_first: bool) -> None:
    conn, _ = listener.accept()
    got = 0
    while got < nrecv:
        d = conn.recv(65536)
        assert d, "client closed early"
        got += len(d)
    if client_closes_first:
        assert conn.recv(1) == b""  # wait for the client's FIN: we close last (LAST_ACK)
    conn.sendall(b"s" * nsend)
    conn.close()  # server closes first when the client waits for EOF (FIN_WAIT1)


def _listeners() -> list[socket.socket]:
    out = []
    for host, *_ in SESSIONS:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.bind((host, 0))
        s.listen(1)
        out.append(s)
    return out


def test_loopback_sessions_exact_bytes_ports_pids_ipv4_ipv6():
    listeners = _listeners()
    sports = [s.getsockname()[1] for s in listeners]
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    everything = ToolProcess("tcplife", "--json")
    text = ToolProcess("tcplife", "-w")
    v6_port = ToolProcess("tcplife", "--json", "-6", "-L", str(sports[2]))
    by_pid = ToolProcess("tcplife", "--json", "-p", str(client.pid))
    tools = [everything, text, v6_port, by_pid]
    for t in tools:
        t.ready()
    t0 = time.monotonic()
    lports = []
    for (host, c2s, s2c, cfirst), lsock, sport in zip(SESSIONS, listeners, sports, strict=True):
        th = threading.Thread(target=_serve, args=(lsock, c2s, s2c, cfirst))
        th.start()
        client.stdin.write(f"{host} {sport} {c2s} {int(cfirst)}\n")
        client.stdin.flush()
        lport, got = map(int, client.stdout.readline().split())
        th.join(10)
        assert got == s2c
        lports.append(lport)
    span_ms = (time.monotonic() - t0) * 1000
    client.stdin.close()
    client.wait(10)
    for s in listeners:
        s.close()
    time.sleep(0.3)
    for t in tools:
        t.stop()

    recs = everything.json_lines()
    assert recs[-1] == {"type": "summary", "lost_events": 0}
    mine = {(r["lport"], r["rport"]): r for r in recs[:-1]}
    for (host, c2s, s2c, _), sport, cport in zip(SESSIONS, sports, lports, strict=True):
        fam = "IPv6" if ":" in host else "IPv4"
        cli, srv = mine[(cport, sport)], mine[(sport, cport)]
        for r in (cli, srv):
            assert r["laddr"] == r["raddr"] == host and r["family"] == fam
            assert 0 < r["ms"] < span_ms
        assert abs(cli["tx_bytes"] - c2s) <= 1024 and abs(cli["rx_bytes"] - s2c) <= 1024, cli
        assert abs(srv["tx_bytes"] - s2c) <= 1024 and abs(srv["rx_bytes"] - c2s) <= 1024, srv
        assert cli["tx_kb"] == cli["tx_bytes"] // 1024
        assert (cli["pid"], cli["comm"]) == (client.pid, "python3"), cli
        assert srv["pid"] == os.getpid(), srv  # owner seen in process context at close
        assert cli["owner_known"] and srv["owner_known"]

    # text (-w) rows agree with the JSON rows
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["PID", "COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"]
    trows = {}
    for line in lines[1:]:
        pid, _comm, ip, la, lp, ra, rp, tx, rx, ms = line.split()
        trows[(int(lp), int(rp))] = (int(pid), int(ip), la, ra, int(tx), int(rx))
    for key, r in mine.items():
        if key[0] in sports or key[1] in sports:
            assert trows[key] == (r["pid"], r["ip"], r["laddr"], r["raddr"], r["tx_kb"], r["rx_kb"])

    # -6 -L PORT: only the server side of that IPv6 session
    only = v6_port.json_lines()[:-1]
    assert [(r["lport"], r["rport"]) for r in only] == [(sports[2], lports[2])]
    # -p CLIENT: only the client's four sessions
    assert sorted((r["lport"], r["rport"]) for r in by_pid.json_lines()[:-1]) == sorted(zip(lports, sports, strict=True))


def test_refused_connect_is_a_zero_byte_session():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connect gets RST
    tool = ToolProcess("tcplife", "--json", "-D", str(port)).ready()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    time.sleep(0.3)
    tool.stop()
    rows = tool.json_lines()[:-1]
    assert len(rows) == 1
    assert rows[0]["rport"] == port and rows[0]["tx_bytes"] == 0 and rows[0]["rx_bytes"] == 0
    assert rows[0]["pid"] == os.getpid()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["tcplife", "-L", "70000"], "out of range"),
        (["tcplife", "-L", "80;rm"], "localport"),
        (["tcplife", "-4", "-6"], "exclude"),
        (["tcplife", "-D", "1,2,3,4,5,6,7,8,9"], "at most"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
