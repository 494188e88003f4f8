"""Load and leaks (issue 6): a long add/delete churn must leave the server process as
it was (mappings, fds, RSS as /proc shows them), and many clients at once must all be
answered correctly and in bounded time. The numbers go to the end of the pytest run
(conftest.SUMMARY) and to stdout (-s)."""

import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from conftest import SUMMARY, Raw
from kernel import assert_residency_agrees, process_counts

MIB = 1 << 20
CYCLES = 1000
WARMUP = 24
# RSS may keep what the allocator caches (freed heap not yet returned, per-thread
# arenas of the prealloc and client threads): a few MiB, nothing that grows with the
# number of cycles. Mappings and fds must be exact.
RSS_SLACK = 4 * MIB
CLIENTS = 32
REQUESTS = 100
TIME_LIMIT = 60.0


def report(line):
    print(line)
    SUMMARY.append(line)


def ok(reply, what):
    assert reply == {"return": {}}, f"{what}: {reply}"


def churn_spec(n, memdir):
    """The n-th object of the churn: ram, memfd and file (temp file in a directory),
    2-8 MiB, every other one preallocated."""
    kind = ("memory-backend-ram", "memory-backend-memfd", "memory-backend-file")[n % 3]
    args = {"qom-type": kind, "id": f"churn{n}", "size": (2 << (n % 3)) * MIB,
            "prealloc": n % 2 == 0}
    if kind == "memory-backend-file":
        args.update({"mem-path": str(memdir), "share": n % 4 == 1})
    return args


def test_add_delete_churn_leaves_the_process_as_it_was(hostmem):
    memdir = Path(tempfile.mkdtemp(prefix="hmload", dir="/dev/shm"))
    try:
        r = Raw(hostmem.sock)

        def cycle(n):
            args = churn_spec(n, memdir)
            ok(r.request({"execute": "object-add", "arguments": args}), args)
            if n % 25 == 0:     # now and then, what the kernel holds for it
                def residency():
                    return r.request({"execute": "__org.hostmem_query-memdev-residency",
                                      "arguments": {"id": args["id"]}})["return"][0]
                view = assert_residency_agrees(hostmem.pid, residency)
                assert view.resident == (args["size"] if args["prealloc"] else 0), args
            ok(r.request({"execute": "object-del", "arguments": {"id": args["id"]}}), n)

        for n in range(WARMUP):
            cycle(n)
        base = process_counts(hostmem.pid)
        t0 = time.monotonic()
        for n in range(WARMUP, WARMUP + CYCLES):
            cycle(n)
        seconds = time.monotonic() - t0
        after = process_counts(hostmem.pid)
        assert r.request({"execute": "query-memdev"}) == {"return": []}
        assert list(memdir.iterdir()) == []
        r.close()
        report(f"load: {CYCLES} object-add/object-del cycles (ram/memfd/file, 2-8 MiB, "
               f"half preallocated) in {seconds:.1f} s after {WARMUP} warm-up cycles; "
               f"mappings {base['maps']} -> {after['maps']}, fds {base['fds']} -> "
               f"{after['fds']}, VmRSS {base['rss'] / MIB:.1f} -> {after['rss'] / MIB:.1f} MiB")
        assert after["maps"] == base["maps"], (base, after)
        assert after["fds"] == base["fds"], (base, after)
        assert abs(after["rss"] - base["rss"]) <= RSS_SLACK, (base, after)
    finally:
        shutil.rmtree(memdir, ignore_errors=True)


class Client(threading.Thread):
    """One of the concurrent clients: reads and writes on its own objects, checking
    every reply against what it knows they must be."""

    def __init__(self, server, index, barrier):
        super().__init__(name=f"client{index}")
        self.sock, self.pid = server.sock, server.pid
        self.i, self.barrier = index, barrier
        self.rng = random.Random(index)
        self.mine = {}      # id -> expected settings
        self.made = 0
        self.requests = 0
        self.error = None

    def call(self, cmd, **args):
        req = {"execute": cmd, "id": [self.i, self.requests]}
        if args:
            req["arguments"] = args
        reply = self.r.request(req)
        self.requests += 1
        assert reply is not None and reply.pop("id") == [self.i, self.requests - 1], reply
        assert "return" in reply, f"{cmd} {args}: {reply}"
        return reply["return"]

    def step(self):
        op = self.rng.choice(["add", "del", "memdev", "get", "list", "residency", "set"])
        if op == "add" or not self.mine:
            oid = f"c{self.i}x{self.made}"
            self.made += 1
            kind = self.rng.choice(["memory-backend-ram", "memory-backend-memfd"])
            exp = {"size": self.rng.choice([2, 4]) * MIB, "prealloc": self.rng.random() < 0.5,
                   "merge": True, "dump": True}
            assert self.call("object-add", **{"qom-type": kind, "id": oid, **exp}) == {}
            self.mine[oid] = exp
            return
        oid = self.rng.choice(sorted(self.mine))
        exp = self.mine[oid]
        path = f"/objects/{oid}"
        if op == "del":
            assert self.call("object-del", id=oid) == {}
            del self.mine[oid]
        elif op == "memdev":
            seen = {m["id"]: m for m in self.call("query-memdev")}
            for k, e in self.mine.items():
                assert {p: seen[k][p] for p in e} == e, (k, seen.get(k))
            gone = {f"c{self.i}x{n}" for n in range(self.made)} - set(self.mine)
            assert not gone & set(seen), gone & set(seen)
        elif op == "get":
            prop = self.rng.choice(sorted(exp))
            assert self.call("qom-get", path=path, property=prop) == exp[prop]
        elif op == "list":
            names = {p["name"] for p in self.call("qom-list", path=path)}
            assert {"type", "size", "merge", "dump", "prealloc", "policy"} <= names, names
        elif op == "residency":
            res = self.call("__org.hostmem_query-memdev-residency", id=oid)[0]
            assert res["id"] == oid and res["size"] == exp["size"], res
            # What smaps says of the backend's range, and the command agreeing.
            view = assert_residency_agrees(
                self.pid, lambda: self.call("__org.hostmem_query-memdev-residency", id=oid)[0])
            assert view.resident == (exp["size"] if exp["prealloc"] else 0), (res, exp)
        else:
            prop = self.rng.choice(["merge", "dump"])
            value = not exp[prop]
            assert self.call("qom-set", path=path, property=prop, value=value) == {}
            exp[prop] = value

    def run(self):
        try:
            self.r = Raw(self.sock)
            self.barrier.wait()
            while self.requests < REQUESTS:
                self.step()
            for oid in sorted(self.mine):
                assert self.call("object-del", id=oid) == {}
            self.r.close()
        except BaseException as e:   # reported by the test, with the client's name
            self.error = e


def test_32_clients_at_once_are_all_answered_correctly(hostmem):
    base = process_counts(hostmem.pid)
    barrier = threading.Barrier(CLIENTS + 1)
    clients = [Client(hostmem, i, barrier) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    barrier.wait(timeout=30)
    t0 = time.monotonic()
    for c in clients:
        c.join(timeout=max(0.0, TIME_LIMIT - (time.monotonic() - t0)))
    seconds = time.monotonic() - t0
    stuck = [c.name for c in clients if c.is_alive()]
    assert not stuck, f"no answer within {TIME_LIMIT} s (deadlock?): {stuck}"
    errors = [f"{c.name}: {c.error!r}" for c in clients if c.error]
    assert not errors, "\n".join(errors)
    total = sum(c.requests for c in clients)
    report(f"load: {CLIENTS} clients x {REQUESTS}+ requests (reads and writes mixed), "
           f"{total} requests in {seconds:.1f} s, every reply checked")
    assert seconds < TIME_LIMIT
    # All gone, as the kernel says: no backend left, every connection released.
    r = Raw(hostmem.sock)
    assert r.request({"execute": "query-memdev"}) == {"return": []}
    r.close()
    deadline = time.monotonic() + 10
    while True:
        now = process_counts(hostmem.pid)
        if (now["fds"], now["threads"]) == (base["fds"], base["threads"]):
            break
        assert time.monotonic() < deadline, (base, now)
        time.sleep(0.05)
