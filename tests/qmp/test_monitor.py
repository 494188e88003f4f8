"""`hostmem run --qmp` driven by the real qemu.qmp client, plus raw sockets for the
input a real client never sends. Claims about memory are checked against
/proc/PID/numa_maps and smaps of the server process (kernel.py), not against its own
answers; hostmem's residency command is checked to agree with them."""

import json
import os
import signal
import socket
import stat
import threading
import time

import pytest

from conftest import Qmp, Raw, start_hostmem
from kernel import (assert_residency_agrees, backend_view, prealloc_in_flight, range_view,
                    wait_for)

MIB = 1 << 20
GIB = 1 << 30
RESIDENCY = "__org.hostmem_query-memdev-residency"


def ram(q, id, size=4 * MIB, **props):
    return q("object-add", **{"qom-type": "memory-backend-ram", "id": id, "size": size,
                              **props})


def test_socket_is_0600_from_the_start_and_accepts_both_spellings(sockdir):
    path = sockdir / "bare.sock"
    srv = start_hostmem(path, spec=str(path))  # bare PATH; Server polls every 2 ms
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    q = Qmp(path)
    assert q("query-version")["package"].startswith("hostmem ")
    q.close()
    assert srv.close() == 0
    assert not path.exists()


def test_every_command(hostmem):
    q = Qmp(hostmem.sock)
    names = {c["name"] for c in q("query-commands")}
    assert names == {"qmp_capabilities", "query-commands", "query-version", "object-add",
                     "object-del", "qom-list", "qom-get", "qom-set", "query-memdev",
                     "quit", "__org.hostmem_memdev-rebind",
                     "__org.hostmem_query-memdev-residency",
                     "__org.hostmem_memdev-save"}
    v = q("query-version")
    assert set(v["qemu"]) == {"major", "minor", "micro"}
    assert ram(q, "m1", 2 * MIB, policy="bind", **{"host-nodes": [0]}) == {}
    assert q("object-add", **{"qom-type": "memory-backend-memfd", "id": "d1",
                              "size": 4 * MIB}) == {}
    assert q("object-add", **{"qom-type": "memory-backend-file", "id": "f1",
                              "size": 4 * MIB, "mem-path": "/tmp", "share": True}) == {}
    assert q("qom-list", path="/") == [{"name": "type", "type": "string"},
                                       {"name": "objects", "type": "child<container>"}]
    assert q("qom-list", path="/objects") == [
        {"name": "type", "type": "string"},
        {"name": "m1", "type": "child<memory-backend-ram>"},
        {"name": "d1", "type": "child<memory-backend-memfd>"},
        {"name": "f1", "type": "child<memory-backend-file>"}]
    props = {p["name"]: p["type"] for p in q("qom-list", path="/objects/f1")}
    assert props["type"] == "string" and props["policy"] == "HostMemPolicy"
    assert props["host-nodes"] == "int" and props["mem-path"] == "string"
    assert props["size"] == "int" and props["discard-data"] == "bool"
    assert q("qom-get", path="/objects/m1", property="host-nodes") == [0]
    assert q("qom-get", path="/objects/m1", property="policy") == "bind"
    assert q("qom-get", path="/objects/m1", property="size") == 2 * MIB
    assert q("qom-get", path="m1", property="type") == "memory-backend-ram"
    assert q("qom-get", path="/objects/d1", property="seal") is True
    assert q("qom-get", path="/objects/f1", property="mem-path") == "/tmp"
    assert q("qom-get", path="/objects", property="d1") == "/objects/d1"
    assert q("qom-set", path="/objects/m1", property="merge", value=False) == {}
    assert q("qom-set", path="/objects/m1", property="dump", value=False) == {}
    assert q("qom-set", path="/objects/m1", property="prealloc", value=True) == {}
    assert q("qom-set", path="/objects/m1", property="prealloc-threads", value=1) == {}
    memdev = {m["id"]: m for m in q("query-memdev")}
    assert memdev["m1"] == {"id": "m1", "size": 2 * MIB, "merge": False, "dump": False,
                            "prealloc": True, "share": False, "reserve": True,
                            "host-nodes": [0], "policy": "bind"}
    assert memdev["d1"]["share"] is True
    m1 = assert_residency_agrees(hostmem.pid, lambda: q(RESIDENCY, id="m1")[0])
    assert m1.rss == 2 * MIB      # the live prealloc happened, as smaps counts it
    # dump=off and merge=off reached every VMA of the backend.
    assert "dd" in m1.vmflags and "mg" not in m1.any_vmflags, m1.vmas
    assert q("object-del", id="m1") == {}
    assert [m["id"] for m in q("query-memdev")] == ["d1", "f1"]
    q.close()


def test_errors_have_qemus_classes_and_words(hostmem):
    q = Qmp(hostmem.sock)
    ram(q, "m1")
    e = q.error
    add = lambda **a: e("object-add", **{"qom-type": "memory-backend-ram", **a})
    assert add(id="m1", size=MIB) == (
        "GenericError", "attempt to add duplicate property 'm1' to object (type 'container')")
    assert add(id="m2") == ("GenericError", "Parameter 'size' is missing")
    assert add(id="m2", size="1M") == ("GenericError", "Parameter 'size' expects uint64")
    assert add(id="m2", size=-1) == ("GenericError", "Parameter 'size' expects uint64")
    assert add(id="m2", size=MIB, sized=3) == ("GenericError", "Parameter 'sized' is unexpected")
    assert add(id="m2", size=MIB, policy="weird") == (
        "GenericError", "Parameter 'policy' does not accept value 'weird'")
    assert add(id="m2", size=MIB, merge="on") == (
        "GenericError", "Invalid parameter type for 'merge', expected: boolean")
    assert add(id="m2", size=MIB, policy="bind", **{"host-nodes": 0}) == (
        "GenericError", "Invalid parameter type for 'host-nodes', expected: array")
    assert add(id="m2", size=MIB, policy="bind", **{"host-nodes": ["0"]}) == (
        "GenericError", "Parameter 'host-nodes[0]' expects uint64")
    assert add(id="m2", size=0) == (
        "GenericError", "property 'size' of memory-backend-ram doesn't take value '0'")
    assert add(id="m2", size=MIB, policy="bind") == (
        "GenericError", "host-nodes must be set for policy bind")
    assert add(id="2x", size=MIB) == ("GenericError", "Parameter 'id' expects an identifier")
    assert e("object-add", **{"qom-type": "memory-backend-nope", "id": "x", "size": 1}) == (
        "GenericError", "Parameter 'qom-type' does not accept value 'memory-backend-nope'")
    assert e("object-del", id="nope") == ("GenericError", "object 'nope' not found")
    assert e("qom-get", path="/objects/nope", property="size") == (
        "DeviceNotFound", "Device '/objects/nope' not found")
    assert e("qom-list", path="/objects/nope") == (
        "DeviceNotFound", "Device '/objects/nope' not found")
    assert e("qom-get", path="/objects/m1", property="nope") == (
        "GenericError", "Property 'memory-backend-ram.nope' not found")
    assert e("qom-set", path="/objects/m1", property="merge", value="yes") == (
        "GenericError", "Invalid parameter type for 'merge', expected: boolean")
    assert e("qom-set", path="/objects/m1", property="merge") == (
        "GenericError", "Parameter 'value' is missing")
    assert e("qom-set", path="/objects/m1", property="type", value="x") == (
        "GenericError", "Property 'memory-backend-ram.type' is not writable")
    cls, desc = e("qom-set", path="/objects/m1", property="size", value=2 * MIB)
    assert cls == "GenericError" and "'size'" in desc and "'m1'" in desc
    # Placement alone on a live backend names the rebind (QEMU accepts it, no effect).
    for prop, value in (("policy", "interleave"), ("host-nodes", [0])):
        cls, desc = e("qom-set", path="/objects/m1", property=prop, value=value)
        assert cls == "GenericError" and "rebind" in desc, desc
    assert q("qom-set", path="/objects/m1", property="policy", value="default") == {}
    assert e("no-such-command") == (
        "CommandNotFound", "The command no-such-command has not been found")
    assert e("query-version", x=1) == ("GenericError", "Parameter 'x' is unexpected")
    assert e("qmp_capabilities") == (
        "CommandNotFound", "Capabilities negotiation is already complete, command ignored")
    # Failed adds left nothing behind.
    assert [m["id"] for m in q("query-memdev")] == ["m1"]
    q.close()


def test_ids_are_echoed_and_negotiation_comes_first(hostmem):
    r = Raw(hostmem.sock, negotiate=False)
    assert r.greeting["QMP"]["capabilities"] == ["oob"]
    assert r.request({"execute": "query-memdev", "id": "a"}) == {"id": "a", "error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    assert r.request({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]},
                      "id": 1}) == {"return": {}, "id": 1}
    assert r.request({"execute": "query-memdev", "id": {"x": [1, 2]}}) == {
        "return": [], "id": {"x": [1, 2]}}
    assert r.request({"exec-oob": "query-memdev", "id": 2}) == {"id": 2, "error": {
        "class": "GenericError", "desc": "The command query-memdev does not support OOB"}}
    assert r.request({"execute": 5, "id": 3})["id"] == 3
    r.close()


def test_two_clients_see_each_others_objects(hostmem):
    a, b = Qmp(hostmem.sock, "a"), Qmp(hostmem.sock, "b")
    ram(a, "from-a")
    ram(b, "from-b")
    assert [m["id"] for m in a("query-memdev")] == ["from-a", "from-b"]
    assert b.error("object-add", **{"qom-type": "memory-backend-ram", "id": "from-a",
                                    "size": MIB})[0] == "GenericError"
    assert b("object-del", id="from-a") == {}
    assert [m["id"] for m in a("query-memdev")] == ["from-b"]
    a.close()
    b.close()


def test_rebind_and_residency_agree_with_numa_maps(hostmem):
    q = Qmp(hostmem.sock)
    ram(q, "r", 32 * MIB, prealloc=True)
    out = q("__org.hostmem_memdev-rebind", id="r", policy="bind", **{"host-nodes": [0]})
    pages = 32 * MIB // 4096
    assert out["pages-per-node"] == {"0": pages}
    assert out["pages-on-target"] == out["pages-present"] == pages
    assert out["fraction-on-target"] == 1.0
    assert out["policy"] == "bind" and out["host-nodes"] == [0]
    assert out["mempolicy"] == {"mode": "bind", "nodes": [0]}
    assert out["seconds"] >= 0
    memdev = q("query-memdev")[0]
    assert memdev["policy"] == "bind" and memdev["host-nodes"] == [0]
    res = q("__org.hostmem_query-memdev-residency", id="r")
    assert len(res) == 1
    r = res[0]
    kernel = assert_residency_agrees(hostmem.pid, lambda: q(RESIDENCY, id="r")[0])
    assert kernel.pages_per_node == {"0": pages} and kernel.rss == 32 * MIB
    assert set(kernel.policies) == {"bind:0"}
    assert out["pages-per-node"] == kernel.pages_per_node   # the rebind's own report
    assert r["mempolicy"] == {"mode": "bind", "nodes": [0]}  # get_mempolicy, as numa_maps
    # Back to default, and refusals of bad placements.
    out = q("__org.hostmem_memdev-rebind", id="r", policy="default")
    assert out["policy"] == "default" and out["pages-present"] == pages
    kernel = range_view(hostmem.pid, r["host-addr"], r["size"])
    assert set(kernel.policies) == {"default"} and kernel.pages_per_node == {"0": pages}
    cls, desc = q.error("__org.hostmem_memdev-rebind", id="r", policy="bind",
                        **{"host-nodes": [5]})
    assert cls == "GenericError" and "node 5" in desc
    assert q.error("__org.hostmem_memdev-rebind", id="zz", policy="default") == (
        "GenericError", "object 'zz' not found")
    assert q.error("__org.hostmem_query-memdev-residency", id="zz")[0] == "GenericError"
    q.close()


def test_machine_defaults_apply_to_qmp_backends(sockdir):
    srv = start_hostmem(sockdir / "q.sock", "-machine", "mem-merge=off,dump-guest-core=off",
                        "-mem-prealloc")
    q = Qmp(srv.sock)
    ram(q, "m", 8 * MIB)
    ram(q, "n", 8 * MIB, merge=True, prealloc=False)
    m, n = q("query-memdev")
    assert (m["merge"], m["dump"], m["prealloc"]) == (False, False, True)
    assert (n["merge"], n["dump"], n["prealloc"]) == (True, False, False)
    km, kn = (assert_residency_agrees(srv.pid, lambda i=i: q(RESIDENCY, id=i)[0])
              for i in ("m", "n"))
    assert km.rss == 8 * MIB and kn.rss == 0     # -mem-prealloc, unless prealloc=false
    assert "dd" in km.vmflags and "mg" not in km.any_vmflags, km.vmas
    assert "dd" in kn.vmflags and "mg" in kn.vmflags, kn.vmas
    q.close()
    assert srv.close() == 0


def test_long_prealloc_does_not_block_other_clients(hostmem):
    a, b = Qmp(hostmem.sock, "a"), Qmp(hostmem.sock, "b")
    # shmem (memfd, 4 KiB pages) on one thread is the slowest prealloc there is, so
    # 2 GiB of it takes over a second even on warm memory: the queries below are sure
    # to land while it runs.
    slow = 2 * GIB
    ram(b, "small")
    b("object-add", **{"qom-type": "memory-backend-memfd", "id": "big", "size": slow})
    done = {}

    def prealloc(name, cmd, **args):
        done[name] = (a(cmd, **args), time.monotonic())

    # 1. object-add with prealloc=on, one thread: seconds of work.
    t = threading.Thread(target=prealloc, args=("add", "object-add"), kwargs={
        "qom-type": "memory-backend-memfd", "id": "huge", "size": slow, "prealloc": True,
        "prealloc-threads": 1})
    t.start()
    prealloc_in_flight(hostmem.pid, slow, "/memfd:huge (deleted)")
    t0 = time.monotonic()
    assert [m["id"] for m in b("query-memdev")] == ["small", "big"]
    assert b("qom-get", path="/objects/small", property="size") == 4 * MIB
    assert b.error("object-add", **{"qom-type": "memory-backend-ram", "id": "huge",
                                    "size": MIB})[0] == "GenericError"
    answered = time.monotonic()
    t.join()
    assert answered - t0 < 0.5 and answered < done["add"][1], \
        "queries waited for another client's object-add prealloc"
    # 2. qom-set prealloc=true on a live backend: its lock is busy, queries are not.
    t = threading.Thread(target=prealloc, args=("set", "qom-set"), kwargs={
        "path": "/objects/big", "property": "prealloc", "value": True})
    b("qom-set", path="/objects/big", property="prealloc-threads", value=1)
    t.start()
    big = prealloc_in_flight(hostmem.pid, slow, "/memfd:big (deleted)")
    t0 = time.monotonic()
    memdev = {m["id"]: m for m in b("query-memdev")}
    assert b("qom-get", path="/objects/big", property="prealloc") is False
    settings_answered = time.monotonic()
    # The residency query reads /proc while the kernel is busy faulting pages in:
    # slower, but answered while the prealloc still runs. Rss only grows meanwhile, so
    # its answer lies between the kernel's readings before and after it.
    rss_before = range_view(hostmem.pid, big.start, slow).rss
    res = {r["id"]: r for r in b("__org.hostmem_query-memdev-residency")}
    answered = time.monotonic()
    rss_after = range_view(hostmem.pid, big.start, slow).rss
    t.join()
    assert settings_answered - t0 < 0.5 and answered < done["set"][1], \
        "queries waited for another client's qom-set prealloc"
    assert memdev["big"]["prealloc"] is False            # not finished when asked
    assert res["big"].get("busy") is True and res["big"]["host-addr"] == big.start
    assert 0 < rss_before <= res["big"]["resident-bytes"] <= rss_after, \
        (rss_before, res["big"]["resident-bytes"], rss_after)
    assert res["big"]["resident-bytes"] < slow            # progress, not the end
    assert res["small"].get("busy") is None
    assert b("qom-get", path="/objects/big", property="prealloc") is True
    assert assert_residency_agrees(hostmem.pid, lambda: b(RESIDENCY, id="big")[0]).rss == slow
    a.close()
    b.close()


def test_bad_input_never_disturbs_others(hostmem):
    q = Qmp(hostmem.sock)
    ram(q, "keep", 4 * MIB, prealloc=True)

    # Malformed JSON: an error reply, and the connection goes on.
    r = Raw(hostmem.sock)
    for bad in (b'{"execute": bad}\n', b"}\n", b'{"a":1,}\n', b"\xff\xfe\n"):
        reply = r.request(bad)
        assert reply["error"]["class"] == "GenericError"
        assert reply["error"]["desc"].startswith("JSON parse error"), reply
    assert r.request(b"[]\n")["error"]["desc"] == "QMP input must be a JSON object"
    r.send(b'{"execute":\n "query-memdev"')                    # incomplete: no reply yet
    r.send(b"}\n")
    assert r.read()["return"][0]["id"] == "keep"                 # completed across sends
    deep = b"[" * 5000 + b"]" * 5000 + b"\n"                     # nesting past the parser's
    assert r.request(deep)["error"]["desc"].startswith("JSON parse error")
    assert r.request({"execute": "query-memdev", "id": 1})["id"] == 1
    r.close()

    # A request over 1 MiB: error reply, then the connection is closed.
    r = Raw(hostmem.sock)
    try:
        r.send(b'{"execute": "query-memdev", "id": "' + b"x" * (2 * MIB))
    except OSError:
        pass  # the server may close before everything is sent
    reply = r.read()
    assert reply["error"]["class"] == "GenericError" and "exceeds" in reply["error"]["desc"]
    try:
        assert r.read() is None
    except ConnectionResetError:
        pass  # closed with the rest of the request unread: a reset, also closed
    r.close()

    # Disconnect mid-command: a prealloc whose client is gone before the reply.
    r = Raw(hostmem.sock)
    r.send({"execute": "object-add", "arguments": {
        "qom-type": "memory-backend-ram", "id": "orphan", "size": 256 * MIB, "prealloc": True}})
    r.close()
    # ... and half a request, then gone.
    r = Raw(hostmem.sock)
    r.send(b'{"execute": "object-add", "arguments": {"qom-type": "memory-')
    r.close()

    # A client that never reads: it is cut off, nobody else notices.
    r = Raw(hostmem.sock)
    r.s.settimeout(1)
    sent = 0
    try:
        for _ in range(2000):
            r.send(b'{"execute": "qom-list", "arguments": {"path": "/objects/keep"}}' * 20)
            sent += 1
    except OSError:
        pass
    stalled = time.monotonic()
    # The server gives up on it after 5 s without progress; others go on meanwhile.
    while time.monotonic() - stalled < 6:
        t0 = time.monotonic()
        assert q("qom-get", path="/objects/keep", property="size") == 4 * MIB
        assert time.monotonic() - t0 < 0.5
        time.sleep(0.5)
    r.s.settimeout(10)
    try:
        while r.s.recv(1 << 20):
            pass
        closed_by_server = True
    except ConnectionResetError:
        closed_by_server = True
    except socket.timeout:
        closed_by_server = False
    assert sent > 0 and closed_by_server, "a client that never reads was not cut off"
    r.close()

    # Everyone else is fine, backends intact (the orphan's add completed).
    wait_for(lambda: "orphan" in [m["id"] for m in q("query-memdev")] or None,
             "the orphan's object-add completed")
    for id, size in (("keep", 4 * MIB), ("orphan", 256 * MIB)):
        assert assert_residency_agrees(hostmem.pid, lambda: q(RESIDENCY, id=id)[0]).rss == size
    q.close()


def fd_targets(pid):
    """What each open fd of `pid` refers to (/proc/PID/fd links)."""
    d = f"/proc/{pid}/fd"
    return {os.readlink(f"{d}/{n}") for n in os.listdir(d)}


@pytest.mark.parametrize("how", ["quit", "SIGINT", "SIGTERM"])
def test_stop_deletes_everything_and_exits_0(sockdir, how):
    """The backends are seen in /proc/PID/smaps and fd before the stop; after it
    the process is gone with its memory, and each file backend's blocks are punched out
    (discard-data=on): only Backend::delete does that, an exit alone keeps the data."""
    boot_file, added_file = sockdir / "boot.ram", sockdir / "added.ram"
    srv = start_hostmem(sockdir / "s.sock", "-object",
                        f"memory-backend-file,id=boot,size=8M,mem-path={boot_file},"
                        "share=on,prealloc=on,discard-data=on")
    watcher = Qmp(srv.sock, "watcher")
    q = Qmp(srv.sock)
    ram(q, "added", 8 * MIB, prealloc=True)
    assert q("object-add", **{"qom-type": "memory-backend-file", "id": "added-file",
                              "size": 8 * MIB, "mem-path": str(added_file), "share": True,
                              "prealloc": True, "discard-data": True}) == {}
    # What the kernel shows of each backend before the stop.
    res = {r["id"]: r for r in q("__org.hostmem_query-memdev-residency")}
    assert set(res) == {"boot", "added", "added-file"}
    for r in res.values():
        assert backend_view(srv.pid, r).rss == r["size"], r["id"]
    fds = fd_targets(srv.pid)
    assert {str(boot_file), str(added_file)} <= fds, fds
    for f in (boot_file, added_file):
        assert os.stat(f).st_blocks * 512 >= 8 * MIB, f
    # A long prealloc in flight: stopping must cancel it rather than wait.
    r = Raw(srv.sock)
    r.send({"execute": "object-add", "arguments": {
        "qom-type": "memory-backend-ram", "id": "slow", "size": 8 * GIB, "prealloc": True,
        "prealloc-threads": 1, "reserve": True}})
    prealloc_in_flight(srv.pid, 8 * GIB)
    t0 = time.monotonic()
    if how == "quit":
        # Like QEMU: the quitter gets its reply first, then the event.
        quitter = Raw(srv.sock)
        quitter.send({"execute": "quit"})
        assert json.loads(quitter.readline()) == {"return": {}}
        assert json.loads(quitter.readline())["event"] == "SHUTDOWN"
        quitter.close()
    else:
        srv.signal(getattr(signal, how))
    event = watcher.next_event()
    assert event["event"] == "SHUTDOWN"
    assert event["data"]["reason"] == ("host-qmp-quit" if how == "quit" else "host-signal")
    assert srv.wait() == 0
    assert time.monotonic() - t0 < 5, "stopping waited for the prealloc"
    assert not os.path.exists(f"/proc/{srv.pid}"), "the process and its memory are gone"
    for f in (boot_file, added_file):
        st = os.stat(f)
        assert st.st_blocks == 0, f"{f}: {st.st_blocks} blocks: not deleted through discard-data"
        assert st.st_size == 8 * MIB, f
    assert not os.path.exists(srv.sock)
    err = srv.stderr()
    assert "panick" not in err, err
    r.close()
