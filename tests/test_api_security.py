"""Each flaw of the seed's "BCC REST-ified" is a test here: no token off loopback, spliced
parameters, "false" read as true, one request at a time, shared results; plus TLS, CORS,
DNS rebinding and cross-site posts. Real agent, real uvicorn, real runs."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from bpfscope.agent.api import load_tools
from tests.agent_helpers import ROOT, Agent, free_port, wait_attached
from tests.helpers import build_c

pytestmark = pytest.mark.bpf

C_TEXT = '0); bpf_probe_write_user((void *)0, "x", 1); /* \\"'  # valid in no option's grammar
FAILED_EXEC = "/nonexistent-bpfscope-test"
SPIN_C = r"""
volatile unsigned long sink;
__attribute__((noinline)) void %(name)s(void) { for (;;) { for (int i = 0; i < 1000; i++) sink += i; } }
int main(void) { %(name)s(); return 0; }
"""


@pytest.fixture(scope="module")
def tagent(tmp_path_factory):
    """An agent with a generated token and a limit of 4 runs."""
    d = tmp_path_factory.mktemp("tok")
    token_file = d / "token"
    a = Agent("--collectors", "execs", "--token-file", str(token_file), "--max-runs", "4",
              "--max-runs-per-tool", "4", "--max-duration", "60", log=d / "agent.log")
    try:
        a.token = _wait_token(token_file)
        a.ready()
        a.token_file = token_file
        yield a
    finally:
        a.stop()


def _wait_token(path, timeout=20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError("token file not written")


@pytest.fixture
def tc(tagent):
    with tagent.client() as c:
        yield c
        for r in c.get("/api/v1/runs").json()["runs"]:  # leave the slots free for the next test
            if r["state"] in ("pending", "running"):
                c.delete(f"/api/v1/runs/{r['id']}")


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfscope", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------ binding
@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", ""])
def test_non_loopback_bind_without_token_refuses_to_start(host):
    port = free_port()
    p = _serve("--listen", f"{host}:{port}", "--collectors", "execs")
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "token" in err[0] and "Traceback" not in p.stderr, p.stderr
    assert not _listening(port)


def test_generated_token_file_is_0600_printed_once_and_required(tmp_path):
    tok = tmp_path / "token"
    a = Agent("--collectors", "execs", "--token-file", str(tok), host="0.0.0.0", log=tmp_path / "a.log")
    try:
        token = _wait_token(tok)
        a.token = token
        a.host = "127.0.0.1"  # bound to every address: reach it through loopback
        a.ready()
        assert stat.S_IMODE(tok.stat().st_mode) == 0o600
        assert len(token) >= 32
        with httpx.Client(base_url=a.url) as c:
            assert c.get("/api/v1/tools").status_code == 401
            assert c.get("/metrics").status_code == 401
            assert c.get("/healthz").status_code == 200  # probes stay open
        with a.client() as c:
            assert c.get("/api/v1/tools").status_code == 200
    finally:
        a.stop()
    assert a.output().count(token) == 1
    b = Agent("--collectors", "execs", "--token-file", str(tok), log=tmp_path / "b.log")
    try:
        b.token = token
        b.ready()
        with b.client() as c:
            assert c.get("/api/v1/runs").status_code == 200
    finally:
        b.stop()
    assert token not in b.output()  # shown only when generated


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", "Basic dXNlcjpwYXNz", "Bearer", "bearer  x",
                                  "{t}", "Bearer {t}x", "Bearer {p}", "Bearer x{t}", "Token {t}"])
def test_wrong_token_gets_401(tagent, auth):
    headers = {}
    if auth is not None:
        headers["Authorization"] = auth.format(t=tagent.token, p=tagent.token[:-1])
    with tagent.client() as c:
        before = len(c.get("/api/v1/runs").json()["runs"])
    with httpx.Client(base_url=tagent.url, headers=headers) as c:
        for method, path in [("GET", "/api/v1/tools"), ("GET", "/api/v1/runs"), ("GET", "/api/v1/doctor"),
                             ("POST", "/api/v1/runs"), ("DELETE", "/api/v1/runs/1-deadbeef"),
                             ("GET", "/api/v1/runs/1-deadbeef/events"), ("GET", "/metrics")]:
            r = c.request(method, path, json={"tool": "execsnoop", "duration": 1} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"].lower().startswith("bearer")
    with tagent.client() as c:
        assert len(c.get("/api/v1/runs").json()["runs"]) == before  # the POST started nothing


# ----------------------------------------------------------------------------- injection
def _injection_cases() -> list[tuple[str, dict]]:
    tools, _ = load_tools()
    cases = [("pid-or", {"tool": "execsnoop", "options": {"pid": "1 || 1"}}),
             ("tool", {"tool": C_TEXT}),
             ("duration", {"tool": "execsnoop", "duration": C_TEXT}),
             ("option-name", {"tool": "execsnoop", "options": {C_TEXT: 1}})]
    for name, cls in tools.items():
        for o in cls.options:
            if o.cli_only:
                continue
            value = [C_TEXT] if (o.multiple or o.nargs in ("*", "+")) else C_TEXT
            cases.append((f"{name}.{o.name}", {"tool": name, "options": {o.name: value}, "duration": 1}))
    return cases


def test_polled_run_status_needs_the_token_too(tagent, tc):
    """GET /runs/{id} of a run that exists (answered by the status fast path): the same token
    rules, body and headers as the other routes."""
    run = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"ppid": 1}, "duration": 20}).json()
    try:
        path = f"/api/v1/runs/{run['id']}"
        for auth in (None, "Bearer wrong", f"Basic {tagent.token}", f"Bearer {tagent.token}x", f"Token {tagent.token}"):
            with httpx.Client(base_url=tagent.url, headers={"Authorization": auth} if auth else {}) as c:
                r = c.get(path)
                assert r.status_code == 401, (auth, r.status_code)
                assert r.headers["www-authenticate"].lower().startswith("bearer")
        for auth in (f"Bearer {tagent.token}", f"bearer   {tagent.token}"):
            with httpx.Client(base_url=tagent.url, headers={"Authorization": auth}) as c:
                r = c.get(path)
                assert r.status_code == 200 and r.headers["content-type"] == "application/json", auth
                assert r.json()["id"] == run["id"] and r.json()["tool"] == "execsnoop"
                assert int(r.headers["content-length"]) == len(r.content)
                assert c.get(path + "x").status_code == 422
                assert c.get(path[:-1] + ("0" if path[-1] != "0" else "1")).status_code == 404
    finally:
        tc.delete(f"/api/v1/runs/{run['id']}")


@pytest.mark.parametrize("body", [b for _, b in _injection_cases()], ids=[i for i, _ in _injection_cases()])
def test_code_in_any_field_is_422(tc, body):
    r = tc.post("/api/v1/runs", json=body)
    assert r.status_code == 422, (body, r.status_code, r.text)
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_nothing_started_by_rejected_requests(tc):
    before = {r["id"] for r in tc.get("/api/v1/runs").json()["runs"]}
    for _, body in _injection_cases():
        assert tc.post("/api/v1/runs", json=body).status_code == 422
    assert {r["id"] for r in tc.get("/api/v1/runs").json()["runs"]} == before


# ------------------------------------------------------------------------ strict typing
def test_false_is_false(tc):
    # fails=false: a failed exec is NOT reported (the seed read "false" as true and reported it)
    for value, expect in ((False, 0), (True, 1)):
        r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"fails": value, "ppid": os.getpid()},
                                          "duration": 20})
        assert r.status_code == 202
        run = r.json()
        assert run["options"]["fails"] is value
        wait_attached(tc, run["id"])
        with pytest.raises(FileNotFoundError):
            subprocess.run([FAILED_EXEC, "x"])
        subprocess.run(["/bin/true", "fence"], check=True)  # after the failed one: wait until seen
        deadline = time.monotonic() + 10
        while tc.get(f"/api/v1/runs/{run['id']}").json()["events"] < 1 + expect and time.monotonic() < deadline:
            time.sleep(0.05)
        tc.delete(f"/api/v1/runs/{run['id']}")
        events = tc.get(f"/api/v1/runs/{run['id']}/result").json()["events"]
        assert [e["retval"] for e in events if e["filename"] == FAILED_EXEC] == [-2] * expect
    for bad in ("false", "true", 0, 1, None, [], "False"):
        r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"fails": bad}, "duration": 1})
        assert r.status_code == 422, (bad, r.text)
    # query parameters too: wait=false is false (answers at once, run still going)
    t0 = time.monotonic()
    r = tc.post("/api/v1/runs?wait=false", json={"tool": "execsnoop", "options": {"ppid": 1}, "duration": 5})
    assert r.status_code == 202 and r.json()["state"] in ("pending", "running") and time.monotonic() - t0 < 3
    assert tc.post("/api/v1/runs?wait=nope", json={"tool": "execsnoop", "duration": 1}).status_code == 422


def test_ms_false_is_microseconds(tc):
    """runqlat's -m over the API: milliseconds=false gives a usecs histogram, true msecs."""
    stop = threading.Event()

    def churn() -> None:  # wake-ups to put on the run queue
        while not stop.is_set():
            subprocess.run(["/bin/true"], check=True)

    t = threading.Thread(target=churn)
    t.start()
    try:
        units = {}
        for value in (False, True):
            r = tc.post("/api/v1/runs?wait=true", json={"tool": "runqlat", "options": {"milliseconds": value},
                                                        "duration": 1})
            assert r.status_code == 200, r.text
            res = tc.get(f"/api/v1/runs/{r.json()['id']}/result").json()
            units[value] = {h["unit"] for s in res["results"] for h in s["histograms"]}
            assert sum(h["count"] for s in res["results"] for h in s["histograms"]) > 0
    finally:
        stop.set()
        t.join()
    assert units == {False: {"usecs"}, True: {"msecs"}}
    for bad in ("false", 0, "0"):
        r = tc.post("/api/v1/runs", json={"tool": "runqlat", "options": {"milliseconds": bad}, "duration": 1})
        assert r.status_code == 422


@pytest.mark.parametrize("options", [{"uid": "0"}, {"uid": 1.5}, {"uid": 0.0}, {"max_args": True}, {"max_args": 61},
                                     {"uid": -1}, {"bogus": 1}, {"name": "("}, {"name": "x" * 300}])
def test_integers_are_integers_and_unknown_options_rejected(tc, options):
    r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": options, "duration": 1})
    assert r.status_code == 422, r.text


# ---------------------------------------------------------------------------- limits
def test_20_concurrent_runs_with_a_limit_of_4(tc, tagent):
    barrier = threading.Barrier(20)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with tagent.client() as c:
            barrier.wait()
            r = c.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"ppid": 1}, "duration": 30})
            with lock:
                results.append(r)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes == [202] * 4 + [429] * 16, codes
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) > 0 and "limit" in r.json()["detail"]
    for r in results:
        if r.status_code == 202:
            assert tc.delete(f"/api/v1/runs/{r.json()['id']}").json()["state"] == "cancelled"
    # slots come back once runs end
    r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"ppid": 1}, "duration": 1})
    assert r.status_code == 202


def test_max_duration_is_enforced(tc):
    r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "duration": 61})  # --max-duration 60
    assert r.status_code == 422 and "60" in r.json()["detail"]
    r = tc.post("/api/v1/runs", json={"tool": "execsnoop", "options": {"duration": 3600}})
    assert r.status_code == 422
    r = tc.post("/api/v1/runs", json={"tool": "execsnoop"})  # default: the maximum
    assert r.status_code == 202 and r.json()["duration"] == 60


def test_two_concurrent_profile_runs_get_separate_results(tc, tmp_path):
    names = [f"alpha_{uuid.uuid4().hex[:6]}", f"beta_{uuid.uuid4().hex[:6]}"]
    procs = [subprocess.Popen([str(build_c(SPIN_C % {"name": n}, tmp_path / n))]) for n in names]
    try:
        time.sleep(0.2)
        runs = [tc.post("/api/v1/runs", json={"tool": "profile", "options": {"pid": [p.pid]}, "duration": 2}).json()
                for p in procs]
        assert len({r["id"] for r in runs}) == 2
        folded = {}
        for n, run in zip(names, runs, strict=True):
            deadline = time.monotonic() + 30
            while tc.get(f"/api/v1/runs/{run['id']}").json()["state"] != "done" and time.monotonic() < deadline:
                time.sleep(0.1)
            folded[n] = tc.get(f"/api/v1/runs/{run['id']}/result", params={"format": "folded"}).text
    finally:
        for p in procs:
            p.kill()
            p.wait()
    a, b = names
    assert a in folded[a] and b not in folded[a]
    assert b in folded[b] and a not in folded[b]


# ------------------------------------------------------------------------- transport
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    a = Agent("--collectors", "execs", "--tls-cert", str(cert), "--tls-key", str(key), scheme="https",
              log=tmp_path / "a.log")
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        a.ready(verify=trust)
        with a.client(verify=trust) as c:
            assert c.get("/api/v1/tools").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{a.port}/healthz", timeout=3)
        with pytest.raises(httpx.HTTPError):  # and the certificate is checked by clients
            httpx.get(f"https://127.0.0.1:{a.port}/healthz", timeout=3)
    finally:
        a.stop()
    p = _serve("--listen", f"127.0.0.1:{free_port()}", "--collectors", "execs", "--tls-cert", str(cert))
    assert p.returncode != 0 and "--tls-key" in p.stderr and "Traceback" not in p.stderr
    p = _serve("--listen", f"127.0.0.1:{free_port()}", "--collectors", "execs", "--tls-cert", str(key),
               "--tls-key", str(key))
    assert p.returncode != 0 and "TLS" in p.stderr and "Traceback" not in p.stderr


def test_cors_only_when_configured(tmp_path):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    a = Agent("--collectors", "execs", log=tmp_path / "a.log")
    try:
        a.ready()
        with a.client() as c:
            r = c.options("/api/v1/runs", headers=pre)
            assert "access-control-allow-origin" not in r.headers
            r = c.get("/api/v1/tools", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in r.headers
    finally:
        a.stop()
    b = Agent("--collectors", "execs", "--cors-origin", "https://ok.example", log=tmp_path / "b.log")
    try:
        b.ready()
        with b.client() as c:
            r = c.options("/api/v1/runs", headers=dict(pre, Origin="https://ok.example"))
            assert r.headers["access-control-allow-origin"] == "https://ok.example"
            r = c.options("/api/v1/runs", headers=pre)
            assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        b.stop()
    p = _serve("--listen", f"127.0.0.1:{free_port()}", "--collectors", "execs", "--cors-origin", "*")
    assert p.returncode != 0 and "cors-origin" in p.stderr


def test_dns_rebinding_cross_site_posts_and_paths(tmp_path):
    a = Agent("--collectors", "execs", log=tmp_path / "a.log")
    try:
        a.ready()
        with a.client() as c:
            # a page on evil.example whose name now resolves to 127.0.0.1
            r = c.get("/api/v1/runs", headers={"Host": f"evil.example:{a.port}"})
            assert r.status_code == 421
            assert c.get("/api/v1/runs", headers={"Host": f"localhost:{a.port}"}).status_code == 200
            # a cross-site form cannot post a run: only application/json (which needs a preflight)
            for ctype, body in (("text/plain", '{"tool": "execsnoop", "duration": 1}'),
                                ("application/x-www-form-urlencoded", "tool=execsnoop&duration=1"),
                                ("multipart/form-data; boundary=x", "--x--")):
                r = c.post("/api/v1/runs", content=body, headers={"Content-Type": ctype})
                assert r.status_code == 415, (ctype, r.status_code)
            assert c.get("/api/v1/runs").json()["runs"] == []
            page = c.get("/")
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            nonce = csp.split("'nonce-")[1].split("'")[0]
            assert f'nonce="{nonce}"' in page.text and nonce != c.get("/").headers["content-security-policy"]
        # no request path reaches the file system outside the page's own files
        for path in ("/static/../../../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                     "/static/..%2fapi.py", "/static/app.js%00.html", "/static/index.html/../../api.py"):
            with socket.create_connection(("127.0.0.1", a.port)) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            status = int(data.split()[1])
            assert status in (400, 404), (path, data[:200])
            assert b"root:" not in data and b"import" not in data
        with a.client() as c:
            assert c.get("/static/app.js").status_code == 200
    finally:
        a.stop()
