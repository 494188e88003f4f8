"""Faults a running monitor must survive (issue 6): huge page exhaustion on every path,
file backends on full, read-only and missing file systems, clients killed mid-request
or never reading. Each must give a clear error, leave nothing half-made, and leave the
other backends as they were. Every claim is checked against what the kernel says: the
pool counters in sysfs, /proc/PID/smaps, /proc/PID/fd and /proc/PID/status, the file
systems' directories and free space.

The tests that change the huge page pool restore it in the `hugepool` fixture, also on
failure; pytest runs them one after another (no xdist), never next to another
pool-changing test."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, Qmp, Raw, huge_pool
from kernel import (assert_residency_agrees, backend_view, prealloc_in_flight,
                    process_counts)

MIB = 1 << 20
ORPHAN = 512 * MIB
MEMFD = "memory-backend-memfd"
FILE = "memory-backend-file"
RESIDENCY = "__org.hostmem_query-memdev-residency"


def bystanders(q, huge=True):
    """Backends that must not notice other requests failing: preallocated RAM, memfd
    and (with `huge`) a memfd of two 2 MiB huge pages."""
    q("object-add", **{"qom-type": "memory-backend-ram", "id": "by-ram", "size": 8 * MIB,
                       "prealloc": True})
    q("object-add", **{"qom-type": MEMFD, "id": "by-memfd", "size": 4 * MIB,
                       "prealloc": True})
    if huge:
        q("object-add", **{"qom-type": MEMFD, "id": "by-huge", "size": 4 * MIB,
                           "hugetlb": True, "prealloc": True})


def state(q, pid):
    """The backends as QMP shows them, and as the kernel (smaps of the server) does:
    resident bytes (hugetlb pages included) and VMAs of each; hostmem's residency
    command must agree with the kernel."""
    memdev = sorted(q("query-memdev"), key=lambda m: m["id"])
    kernel = {}
    for r in q(RESIDENCY):
        view = assert_residency_agrees(pid, lambda i=r["id"]: q(RESIDENCY, id=i)[0])
        kernel[r["id"]] = (view.resident, len(view.vmas))
    return memdev, kernel


def assert_unharmed(q, srv, before):
    assert srv.proc.poll() is None, "the server died"
    after = state(q, srv.pid)
    assert after == before
    memdev, kernel = after
    for m in memdev:    # fully resident, as the kernel counts it
        assert kernel[m["id"]][0] == m["size"], (m, kernel[m["id"]])


@pytest.mark.parametrize("kind", ["memfd", "hugetlbfs"])
@pytest.mark.parametrize("path", ["prealloc", "reserve", "live-prealloc"])
def test_huge_page_exhaustion_is_clear_and_gives_every_page_back(
        hugepool, mounts, hostmem, kind, path):
    # Fixture order matters: the server goes first, then the mounts and the pool.
    hugepool(4)
    q = Qmp(hostmem.sock)
    bystanders(q)
    pool = huge_pool()
    assert pool["free_hugepages"] == 2, pool        # by-huge holds 2 of the 4
    before = state(q, hostmem.pid)
    if kind == "memfd":
        qom_type, props, fs = MEMFD, {"hugetlb": True}, None
    else:
        fs = mounts("hugetlbfs", "pagesize=2M")
        # A named file (created, to be removed again) for the failing adds; the
        # directory (unlinked temp file) for the live one, which outlives its error.
        mem = fs if path == "live-prealloc" else fs / "guest.ram"
        qom_type, props = FILE, {"mem-path": str(mem), "share": True}
    props.update({"qom-type": qom_type, "id": "victim", "size": 8 * MIB})

    if path == "prealloc":
        cls, desc = q.error("object-add", **props, prealloc=True)
    elif path == "reserve":         # prealloc=off, reserve=on: refused before mapping
        cls, desc = q.error("object-add", **props)
    else:
        q("object-add", **props, reserve=False)
        victim = q("__org.hostmem_query-memdev-residency", id="victim")[0]
        assert backend_view(hostmem.pid, victim).vmas, "reserve=off maps the memory"
        assert huge_pool() == pool, "reserve=off holds no pages"
        cls, desc = q.error("qom-set", path="/objects/victim", property="prealloc",
                            value=True)
        # The backend lives on, as it was: nothing faulted in, nothing held.
        assert huge_pool() == pool
        assert backend_view(hostmem.pid, victim).resident == 0
        assert q("qom-get", path="/objects/victim", property="prealloc") is False
        q("object-del", id="victim")
    assert cls == "GenericError"
    # Page size, pages needed, pages free.
    assert desc == (f"{qom_type} 'victim': not enough 2 MiB huge pages: "
                    "4 needed, 2 free on the host"), desc
    assert huge_pool() == pool, "pool counters as they were"
    if fs is not None:
        assert list(fs.iterdir()) == [], "file left behind"
    assert "victim" not in [m["id"] for m in q("query-memdev")]
    assert_unharmed(q, hostmem, before)


def test_file_backend_faults_are_clear_and_leave_no_file(hugepool, mounts, hostmem):
    hugepool(2)
    q = Qmp(hostmem.sock)
    bystanders(q)
    before = state(q, hostmem.pid)

    # A full file system: a 4 MiB tmpfs cannot hold 16 MiB of shared file memory.
    full = mounts("tmpfs", "size=4M")
    free = os.statvfs(full).f_bavail
    for mem in (full / "guest.ram", full):      # a file it creates; a temp file in a dir
        cls, desc = q.error("object-add", **{
            "qom-type": FILE, "id": "f", "size": 16 * MIB, "mem-path": str(mem),
            "share": True, "prealloc": True})
        assert cls == "GenericError"
        assert desc.startswith(
            f"{FILE} 'f': preallocating memory failed: the file system holding {mem} "
            "has no room for it (4 MiB free) at offset "), desc
        assert list(full.iterdir()) == [], "file left behind"
        assert os.statvfs(full).f_bavail == free, "blocks not given back"

    # A read-only mount (as root a mode 0444 file would still open for writing).
    ro = mounts("tmpfs", "size=4M")
    data = b"\x5a" * MIB
    (ro / "guest.ram").write_bytes(data)
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    mtime = (ro / "guest.ram").stat().st_mtime_ns
    for mem in (ro / "guest.ram", ro / "new.ram"):
        cls, desc = q.error("object-add", **{
            "qom-type": FILE, "id": "r", "size": MIB, "mem-path": str(mem), "share": True})
        assert (cls, desc) == (
            "GenericError",
            f"can't open backing store {mem} for guest RAM: Read-only file system")
    assert sorted(p.name for p in ro.iterdir()) == ["guest.ram"]
    assert (ro / "guest.ram").read_bytes() == data
    assert (ro / "guest.ram").stat().st_mtime_ns == mtime
    # The same file with readonly=on is fine: the refusal was about writing.
    q("object-add", **{"qom-type": FILE, "id": "r", "size": MIB,
                       "mem-path": str(ro / "guest.ram"), "share": True, "readonly": True})
    q("object-del", id="r")

    # A path in a directory that does not exist: not created on the way.
    missing = full / "no-such-dir" / "guest.ram"
    cls, desc = q.error("object-add", **{
        "qom-type": FILE, "id": "m", "size": MIB, "mem-path": str(missing)})
    assert desc == f"can't open backing store {missing} for guest RAM: No such file or directory"
    assert not missing.parent.exists()
    assert_unharmed(q, hostmem, before)


# The client process uses the tests' QMP client (tests/lib/hostmem_testkit.py).
TESTKIT = REPO / "tests" / "lib"
CLIENT = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from hostmem_testkit import QmpStream
q = QmpStream.unix(sys.argv[1])
q.send(sys.argv[2])
print("sent", flush=True)
time.sleep(60)  # until the test kills this process
"""


def client_process(sock, text):
    """A client in its own process that sends `text` and then waits to be killed."""
    p = subprocess.Popen([sys.executable, "-c", CLIENT, str(sock), text, str(TESTKIT)],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"sent\n"
    return p


def test_killed_and_stalled_clients_leave_nothing_behind(hostmem):
    q = Qmp(hostmem.sock)
    bystanders(q, huge=False)
    base = process_counts(hostmem.pid)
    before = state(q, hostmem.pid)

    # Killed (SIGKILL) halfway through a request, and during a long prealloc.
    killed = []
    try:
        killed.append(client_process(
            hostmem.sock, '{"execute": "object-add", "arguments": {"qom-ty'))
        killed.append(client_process(
            hostmem.sock, '{"execute": "object-add", "arguments": {'
            '"qom-type": "memory-backend-memfd", "id": "orphan", '
            f'"size": {ORPHAN}, "prealloc": true, "prealloc-threads": 1}}}}\n'))
        # Killed only once the kernel shows the orphan's prealloc running.
        prealloc_in_flight(hostmem.pid, ORPHAN, "/memfd:orphan (deleted)")
    finally:
        for p in killed:
            p.send_signal(signal.SIGKILL)
            p.wait()
    t0 = time.monotonic()
    assert [m["id"] for m in q("query-memdev")][:2] == ["by-ram", "by-memfd"]
    assert time.monotonic() - t0 < 0.5, "a killed client's prealloc held up others"

    # A client that never reads its replies: cut off after 5 s, others served meanwhile.
    stalled = Raw(hostmem.sock)
    stalled.s.settimeout(1)
    flood = b'{"execute": "qom-list", "arguments": {"path": "/objects/by-ram"}}' * 50

    def fill():
        try:
            while True:
                stalled.send(flood)
        except OSError:
            pass
    filler = threading.Thread(target=fill)
    filler.start()
    deadline = time.monotonic() + 30
    while True:     # until the server has let go of every client but q
        t0 = time.monotonic()
        assert q("qom-get", path="/objects/by-ram", property="size") == 8 * MIB
        assert time.monotonic() - t0 < 1, "others waited for a stalled client"
        now = process_counts(hostmem.pid)
        # The orphan memfd (complete, see below) holds one fd of its own.
        if now["fds"] == base["fds"] + 1 and now["threads"] == base["threads"] \
                and "orphan" in [m["id"] for m in q("query-memdev")]:
            break
        assert time.monotonic() < deadline, f"connections not released: {base} -> {now}"
        time.sleep(0.2)
    filler.join()
    stalled.close()
    # Disconnecting does not undo a command (as in QEMU): the orphan is complete.
    orphan = q("__org.hostmem_query-memdev-residency", id="orphan")[0]
    assert assert_residency_agrees(hostmem.pid, lambda: q(RESIDENCY, id="orphan")[0]) \
        .resident == ORPHAN
    q("object-del", id="orphan")
    assert_unharmed(q, hostmem, before)
    after = process_counts(hostmem.pid)
    assert (after["fds"], after["threads"]) == (base["fds"], base["threads"]), (base, after)
