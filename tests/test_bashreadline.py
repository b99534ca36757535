"""bashreadline on the real kernel: commands typed into an interactive bash on a pty the test
opened; lines fed to a C program of ours that defines readline() (the -s case)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid

import pytest

from bpfscope.bpf.object import program_names
from bpfscope.errors import UsageError
from bpfscope.tools.bashreadline import find_readline
from tests.helpers import ToolProcess, build_c, programs_left, run_cli
from tests.pty_helpers import PtyShell, prog_ids_of

BASH = ("/bin/bash", "--norc", "--noprofile", "-i")
READY = 120  # seconds to attach: generous for the kernel matrix VM (qemu TCG is ~20x slower)

FAKE_READLINE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a readline() of our own: one line of stdin, without its newline, malloc'ed (as GNU readline) */
__attribute__((noinline)) char *readline(const char *prompt)
{
    static char buf[8192];
    if (!fgets(buf, sizeof(buf), stdin))
        return NULL;
    buf[strcspn(buf, "\n")] = 0;
    return strdup(buf);
}

int main(void)
{
    char *line;
    while ((line = readline("> ")) != NULL) {
        printf("%zu\n", strlen(line));
        free(line);
    }
    return 0;
}
"""


@pytest.mark.bpf
def test_reports_exactly_the_commands_typed_into_bash():
    """The tool starts first: a readline() already waiting when the uretprobe is attached
    returns through no probe (uretprobes arm at function entry)."""
    tag = uuid.uuid4().hex[:10]
    typed = [f"echo {tag}-1", f"true {tag} 'two words' \"é ü 日本\"", f": {tag} $((1+2)) | cat", f"  {tag}-4  "]
    tool = ToolProcess("bashreadline", "--json").ready(READY)
    text = ToolProcess("bashreadline").ready(READY)
    with PtyShell(BASH) as sh:
        sh.wait_prompt()
        for cmd in typed:
            sh.run(cmd)
        time.sleep(0.3)
    tool.stop()
    text.stop()
    got = [r for r in tool.json_lines() if r.get("pid") == sh.pid]
    typed.append("exit")  # PtyShell.close() types it
    assert [r["command"] for r in got] == typed  # only these, in order, unexpanded
    assert all(r["comm"] == "bash" and r["uid"] == 0 and not r["truncated"] for r in got)
    assert "uretprobe mode" in tool.stderr and "/bash" in tool.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["TIME", "PID", "COMMAND"]
    rows = [ln for ln in lines[1:] if re.match(rf"\d\d:\d\d:\d\d {sh.pid}\s", ln)]
    assert [ln[17:] for ln in rows] == [t.rstrip() for t in typed]  # rows lose trailing blanks


@pytest.mark.bpf
def test_other_binary_with_readline_via_s(tmp_path):
    prog = build_c(FAKE_READLINE, tmp_path / "fakerl")
    assert find_readline(str(prog)) == str(prog)
    lines = [f"first {uuid.uuid4().hex[:8]}", "", "x" * 2000, "last"]
    tool = ToolProcess("bashreadline", "--json", "-s", str(prog)).ready(READY)
    p = subprocess.run([str(prog)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    time.sleep(0.3)
    tool.stop()
    assert p.stdout.split() == [str(len(x)) for x in lines]
    got = [r for r in tool.json_lines() if r.get("comm") == "fakerl"]
    assert [r["command"] for r in got] == [lines[0], "", "x" * 1023, "last"]
    assert [r["truncated"] for r in got] == [False, False, True, False]  # a cut line says so


@pytest.mark.bpf
def test_pid_filter(tmp_path):
    prog = build_c(FAKE_READLINE, tmp_path / "fakerl")
    first = subprocess.Popen([str(prog)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    second = subprocess.Popen([str(prog)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    tool = ToolProcess("bashreadline", "--json", "-s", str(prog), "-p", str(second.pid)).ready(READY)
    # the readline() each is blocked in started before the probe: feed one line to re-arm it
    for p in (first, second):
        p.stdin.write("warm-up\n")
        p.stdin.flush()
    time.sleep(0.2)
    first.communicate("from-first\n")
    second.communicate("from-second\n")
    time.sleep(0.3)
    tool.stop()
    assert [r["command"] for r in tool.json_lines() if "command" in r] == ["from-second"]


@pytest.mark.parametrize("path,needle", [
    ("/nonexistent/bash", "no such file"),
    ("/etc/passwd", "not an ELF file"),
    ("/bin/true", "has no readline() function"),
    ("bin/bash", "absolute path"),
])
def test_bad_binary_is_one_clear_error(path, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        find_readline(path)


@pytest.mark.bpf
def test_bad_binary_from_the_cli():
    r = run_cli("bashreadline", "-s", "/bin/true", "-d", "0.1")
    assert r.returncode == 2 and "has no readline()" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_and_releases_programs(sig):
    tool = ToolProcess("bashreadline").ready(READY)
    during = prog_ids_of(tool.proc.pid)
    assert set(program_names(during).values()) == {"uretprobe_readl"}
    took = tool.stop(sig)
    assert tool.proc.returncode == 0 and "Traceback" not in tool.stderr
    assert took < 2.0
    assert not programs_left(during)
