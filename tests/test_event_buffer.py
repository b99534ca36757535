"""The agent's event buffer against a plain list: exactly the last `capacity` events, every read
from any id gives the same events and the same 'lost' count, whatever is compressed inside."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from bpfscope.agent.runs import EventBuffer, Run, RunManager


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 300), block=st.integers(1, 64), n=st.integers(0, 1200),
       reads=st.lists(st.tuples(st.integers(0, 1300), st.integers(1, 500)), max_size=20))
def test_matches_a_plain_list(capacity, block, n, reads):
    buf = EventBuffer(capacity, block=block)
    ref = []
    for i in range(1, n + 1):
        rec = {"i": i, "text": "é\n\u2028" * (i % 3), "argv": ["a b", str(i)]}
        buf.append(rec)
        ref.append(rec)
    assert buf.last_id == n and len(buf) == min(n, capacity)
    first = max(1, n - capacity + 1)
    for after, limit in reads:
        items, lost = buf.read_raw(after, limit)
        assert lost == max(0, first - after - 1)
        start = max(after + 1, first)
        want = list(range(start, min(n + 1, start + limit)))
        assert [i for i, _ in items] == want
        assert [__import__("json").loads(d) for _, d in items] == [ref[i - 1] for i in want]
    assert buf.all() == ref[first - 1:]


def test_memory_is_compressed():
    buf = EventBuffer(10000)
    for i in range(10000):
        buf.append({"pid": i, "comm": "true", "filename": "/bin/true", "argv": ["/bin/true", f"x{i}"],
                    "args_text": f"/bin/true x{i}", "time_of_day": "12:00:00", "retval": 0})
    held = sum(len(b[2]) for b in buf._blocks) + sum(len(s) for s in buf._tail)
    raw = sum(len(d) for d in buf.raw_all())
    assert held * 5 < raw, (held, raw)


def test_astream_follows_a_live_buffer():
    mgr = RunManager()

    run = Run(id="r", tool="x", options={}, duration=1.0, state="running", events=EventBuffer(50, block=4))
    mgr._runs["r"] = run  # noqa: SLF001 - a buffer without a BPF run behind it

    async def main():
        got, lost = [], 0

        async def writer():
            for i in range(200):
                run.events.append({"i": i})
                if i % 10 == 0:
                    await asyncio.sleep(0.001)
            run.events.close()

        async def reader():
            nonlocal lost
            await asyncio.sleep(0.005)
            async for kind, data, _ in mgr.astream("r", 0, heartbeat=10, poll=0.001):
                if kind == "events":
                    got.extend(i for i, _ in data)
                elif kind == "lost":
                    lost += __import__("json").loads(data)["lost"]
                elif kind == "end":
                    return

        await asyncio.gather(writer(), reader())
        return got, lost

    got, lost = asyncio.run(main())
    assert got == sorted(got) and len(got) + lost == 200 and got[-1] == 200


def test_undecodable_names_stay_valid_json_and_utf8():
    import json

    buf = EventBuffer(10, block=2)
    name = b"bad-\xff-name".decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    for i in range(5):
        buf.append({"i": i, "path": name})
    for _, d in buf.read_raw(0)[0]:
        d.encode()  # what the SSE stream sends must be UTF-8
        assert json.loads(d)["path"] == name
