"""Differential test: the same request scripts against QEMU 7.2
(`qemu-system-x86_64 -machine none -qmp unix:...`) and `hostmem run --qmp`, compared
request by request: success or error, error class, error text and returned value
(normalised only where values legitimately vary: versions, ordering of QOM children).

Every difference must be listed in INTENDED with its reason; an unlisted difference
fails, and so does a listed one that no longer differs (the list stays true).
Scripts: every request of shared/reference/qemu-7.2-qmp-transcript.txt, plus probes.
"""

import json

import pytest

from conftest import SUMMARY, Raw, start_hostmem, start_qemu

MIB = 1 << 20
RAM = "memory-backend-ram"


def add(id, qom_type=RAM, **props):
    return {"execute": "object-add", "arguments": {"qom-type": qom_type, "id": id, **props}}


def get(path, prop):
    return {"execute": "qom-get", "arguments": {"path": path, "property": prop}}


def set_(path, prop, value):
    return {"execute": "qom-set", "arguments": {"path": path, "property": prop,
                                                "value": value}}


def cmd(name, **args):
    r = {"execute": name}
    if args:
        r["arguments"] = args
    return r


# Label -> request (a dict is sent as JSON; bytes are sent as they are).
TRANSCRIPT_1 = [
    ("caps", cmd("qmp_capabilities")),
    ("add m1", add("m1", size=MIB)),
    ("set live size", set_("/objects/m1", "size", 2 * MIB)),
    ("add size 0", add("m2", size=0)),
    ("add nodes without policy", add("m3", size=MIB, **{"host-nodes": [0]})),
    ("add bind without nodes", add("m4", size=MIB, policy="bind")),
    ("add bind 0", add("m5", size=MIB, policy="bind", **{"host-nodes": [0]})),
    ("add bind to absent node 5", add("m6", size=MIB, policy="bind", **{"host-nodes": [5]})),
    ("add bind to node 200", add("m7", size=MIB, policy="bind", **{"host-nodes": [200]})),
    ("add duplicate", add("m1", size=MIB)),
    ("add without size", add("m8")),
    ("add size string", add("m9", size="1M")),
    ("add unknown key", add("m10", size=MIB, sized=3)),
    ("add bad policy", add("m11", size=MIB, policy="weird")),
    ("add prealloc without reserve", add("m12", size=MIB, prealloc=True, reserve=False)),
    ("add prealloc-threads 0", add("m13", size=MIB, **{"prealloc-threads": 0})),
    ("add file without mem-path", add("f1", "memory-backend-file", size=MIB)),
    ("add file bad path", add("f2", "memory-backend-file", size=MIB,
                              **{"mem-path": "/nonexistent/dir/x"})),
    ("add memfd hugetlb 1M", add("d1", "memory-backend-memfd", size=MIB, hugetlb=True)),
    ("get host-nodes", get("/objects/m1", "host-nodes")),
    ("get policy", get("/objects/m1", "policy")),
    ("get merge", get("/objects/m1", "merge")),
    ("set merge", set_("/objects/m1", "merge", False)),
    ("set dump", set_("/objects/m1", "dump", False)),
    ("set prealloc", set_("/objects/m1", "prealloc", True)),
    ("set live policy", set_("/objects/m1", "policy", "interleave")),
    ("list m1", cmd("qom-list", path="/objects/m1")),
    ("query-memdev 1", cmd("query-memdev")),
    ("del m1", cmd("object-del", id="m1")),
    ("del nope", cmd("object-del", id="nope")),
    ("quit", cmd("quit")),
]

TRANSCRIPT_2 = [
    ("caps", cmd("qmp_capabilities")),
    ("add memfd d1", add("d1", "memory-backend-memfd", size=4 * MIB)),
    ("list d1", cmd("qom-list", path="/objects/d1")),
    ("query-memdev 2", cmd("query-memdev")),
    ("get seal", get("/objects/d1", "seal")),
    ("set live share", set_("/objects/d1", "share", False)),
    ("add file f1", add("f1", "memory-backend-file", size=4 * MIB, share=True,
                        **{"mem-path": "/tmp"})),
    ("list f1", cmd("qom-list", path="/objects/f1")),
    ("list objects", cmd("qom-list", path="/objects")),
    ("get align", get("/objects/f1", "align")),
    ("del d1", cmd("object-del", id="d1")),
    ("add bad qom-type", add("x1", "memory-backend-nope", size=4 * MIB)),
    ("no such command", cmd("no-such-command")),
    ("quit", cmd("quit")),
]

# Probes the transcript does not show; answers checked against QEMU 7.2 itself.
PROBES = [
    ("before caps", cmd("query-memdev")),
    ("unknown before caps", cmd("nope")),
    ("caps bad enable", cmd("qmp_capabilities", enable=["nope"])),
    ("caps enable not array", cmd("qmp_capabilities", enable="oob")),
    ("caps unknown arg", cmd("qmp_capabilities", x=1)),
    ("exec-oob before oob", {"exec-oob": "query-memdev"}),
    ("caps oob", cmd("qmp_capabilities", enable=["oob"])),
    ("caps again", cmd("qmp_capabilities")),
    ("exec-oob", {"exec-oob": "query-memdev", "id": 1}),
    ("execute and exec-oob", {"execute": "query-memdev", "exec-oob": "query-memdev"}),
    ("query-version", cmd("query-version")),
    ("query-commands", cmd("query-commands")),
    ("query-version unexpected", cmd("query-version", x=1)),
    ("arguments not object", {"execute": "query-version", "arguments": []}),
    ("non-object request", []),
    ("string request", "x"),
    ("no execute", {}),
    ("execute not string", {"execute": 5, "id": 9}),
    ("unknown member", {"execute": "query-version", "foo": 1}),
    ("id echo object", {"execute": "query-memdev", "id": {"a": [1, 2]}}),
    ("id echo on error", {"execute": "nope", "id": "x"}),
    ("add with id", dict(add("m1", size=MIB), id="abc")),
    ("add size bool", add("m2", size=True)),
    ("add size null", add("m2", size=None)),
    ("add size float", add("m2", size=1.5)),
    ("add size 2^64", b'{"execute":"object-add","arguments":{"qom-type":"memory-backend-ram",'
                      b'"id":"m2","size":18446744073709551616}}\n'),
    ("add threads string", add("m2", size=MIB, **{"prealloc-threads": "4"})),
    ("add threads -1", add("m2", size=MIB, **{"prealloc-threads": -1})),
    ("add threads 2^32", add("m2", size=MIB, **{"prealloc-threads": 1 << 32})),
    ("add merge int", add("m2", size=MIB, merge=1)),
    ("add merge null", add("m2", size=MIB, merge=None)),
    ("add policy int", add("m2", size=MIB, policy=1)),
    ("add nodes not array", add("m2", size=MIB, policy="bind", **{"host-nodes": 0})),
    ("add nodes string elem", add("m2", size=MIB, policy="bind", **{"host-nodes": ["0"]})),
    ("add nodes -1", add("m2", size=MIB, policy="bind", **{"host-nodes": [-1]})),
    ("add nodes 70000", add("m2", size=MIB, policy="bind", **{"host-nodes": [70000]})),
    ("add nodes 1024", add("m2", size=MIB, policy="bind", **{"host-nodes": [1024]})),
    ("add policy preferred-many", add("pm", size=MIB, policy="preferred-many",
                                      **{"host-nodes": [0]})),
    ("del pm", cmd("object-del", id="pm")),
    ("add mem-path on ram", add("m2", size=MIB, **{"mem-path": "/tmp"})),
    ("add no id", {"execute": "object-add", "arguments": {"qom-type": RAM, "size": MIB}}),
    ("add no qom-type", {"execute": "object-add", "arguments": {"id": "m2", "size": MIB}}),
    ("add qom-type int", {"execute": "object-add",
                          "arguments": {"qom-type": 5, "id": "m2", "size": MIB}}),
    ("add bad id", add("2bad", size=MIB)),
    ("add empty id", add("", size=MIB)),
    ("add id int", {"execute": "object-add", "arguments": {"qom-type": RAM, "id": 7,
                                                            "size": MIB}}),
    ("add no arguments", cmd("object-add")),
    ("add two errors", add("m2", size=MIB, sized=1, merge="x")),
    ("add file mem-path int", add("f1", "memory-backend-file", size=MIB, **{"mem-path": 5})),
    ("add file offset", add("fo", "memory-backend-file", size=MIB, offset=4096,
                            **{"mem-path": "/tmp"})),
    ("del fo", cmd("object-del", id="fo")),
    ("add file odd size", add("f9", "memory-backend-file", size=MIB + 1,
                              **{"mem-path": "/tmp"})),
    ("del f9", cmd("object-del", id="f9")),
    ("add bind 0 m5", add("m5", size=MIB, policy="bind", **{"host-nodes": [0, 0]})),
    ("add m3 settings", add("m3", size=MIB, prealloc=True, dump=False, merge=False,
                            **{"prealloc-threads": 2})),
    ("get threads", get("/objects/m3", "prealloc-threads")),
    ("get size", get("/objects/m3", "size")),
    ("get type", get("/objects/m3", "type")),
    ("get m5 nodes", get("/objects/m5", "host-nodes")),
    ("get missing path", get("/objects/nope", "size")),
    ("get missing property", get("/objects/m1", "nope")),
    ("get container type", get("/objects", "type")),
    ("get container child", get("/objects", "m1")),
    ("get container missing", get("/objects", "nope")),
    ("get root type", get("/", "type")),
    ("get empty path", get("", "type")),
    ("get partial path", get("m5", "policy")),
    ("get path int", {"execute": "qom-get", "arguments": {"path": 5, "property": "x"}}),
    ("get no property", {"execute": "qom-get", "arguments": {"path": "/objects/m1"}}),
    ("get no arguments", cmd("qom-get")),
    ("set merge string", set_("/objects/m1", "merge", "yes")),
    ("set no value", {"execute": "qom-set", "arguments": {"path": "/objects/m1",
                                                          "property": "merge"}}),
    ("set merge null", set_("/objects/m1", "merge", None)),
    ("set type", set_("/objects/m1", "type", "x")),
    ("set container type", set_("/objects", "type", "x")),
    ("set missing path", set_("/objects/nope", "merge", True)),
    ("set missing property", set_("/objects/m1", "nope", True)),
    ("set size string", set_("/objects/m1", "size", "x")),
    ("set share string", set_("/objects/m1", "share", "x")),
    ("set reserve", set_("/objects/m1", "reserve", False)),
    ("set nodes int", set_("/objects/m1", "host-nodes", 0)),
    ("set nodes string elem", set_("/objects/m1", "host-nodes", ["a"])),
    ("set policy weird", set_("/objects/m1", "policy", "weird")),
    ("set policy int", set_("/objects/m1", "policy", 3)),
    ("set policy same", set_("/objects/m5", "policy", "bind")),
    ("set threads", set_("/objects/m1", "prealloc-threads", 4)),
    ("set threads 0", set_("/objects/m1", "prealloc-threads", 0)),
    ("set threads -1", set_("/objects/m1", "prealloc-threads", -1)),
    ("set prealloc off", set_("/objects/m3", "prealloc", False)),
    ("set unexpected", {"execute": "qom-set", "arguments": {
        "path": "/objects/m1", "property": "merge", "value": True, "x": 1}}),
    ("list missing", cmd("qom-list", path="/objects/nope")),
    ("list empty path", cmd("qom-list", path="")),
    ("list no path", cmd("qom-list")),
    ("list root", cmd("qom-list", path="/")),
    ("list objects //", cmd("qom-list", path="//objects/")),
    ("list partial", cmd("qom-list", path="objects")),
    ("query-memdev probes", cmd("query-memdev", **{})),
    ("del unexpected", cmd("object-del", id="m1", x=1)),
    ("del empty id", cmd("object-del", id="")),
    ("del id int", cmd("object-del", id=5)),
    ("del no id", cmd("object-del")),
    ("parse error keyword", b'{"execute": bad}\n'),
    ("parse error stray }", b"}\n"),
    ("parse error trailing comma", b'{"a":1,}\n'),
    ("split request", b'{"execute":\n "query-memdev"\n}\n'),
    ("two on one line", b'{"execute":"query-version","id":1}{"execute":"del","id":2}\n'),
    ("single quotes", b"{'execute':'query-memdev','id':'sq'}\n"),
    # Last: QEMU takes this and m1's host-nodes change, which later answers would show.
    ("set nodes [0]", set_("/objects/m1", "host-nodes", [0])),
    ("quit unexpected", cmd("quit", x=1)),
    ("quit", cmd("quit")),
]

SCRIPTS = {"transcript-1": TRANSCRIPT_1, "transcript-2": TRANSCRIPT_2, "probes": PROBES}

# label -> why hostmem answers differently. Labels are unique across scripts.
INTENDED = {
    "set live size": "hostmem's message names the object and says why (QEMU: "
                     "'cannot change property size of memory-backend-ram ')",
    "add bind to absent node 5": "node checked before mmap and named, with the online "
                                 "nodes (QEMU: bare 'Invalid argument' from mbind)",
    "add bind to node 200": "node ids go up to the kernel's 1024 (QEMU's limit is 128); "
                            "node 200 is refused as absent, by name",
    "add memfd hugetlb 1M": "size checked against the huge page size before mapping, "
                            "with a message naming it (QEMU: ftruncate's EINVAL)",
    "set live policy": "placement alone on a live backend is refused, naming the rebind "
                       "(QEMU accepts it with no effect and query-memdev then lies)",
    "list m1": "no x-use-canonical-path-for-ramblock-id, prealloc-context or the "
               "memory-region child (no guest RAM blocks here)",
    "query-memdev 1": "follows from 'set live policy': the policy stays default, "
                      "as the kernel has it",
    "list d1": "as 'list m1'",
    "set live share": "hostmem's message names the object and property",
    "list f1": "as 'list m1'; plus offset and rom (QEMU 8.x properties)",
    "caps bad enable": "names the element (QEMU says Parameter 'null')",
    "add nodes -1": "names the element (QEMU says Parameter 'null')",
    "add nodes 70000": "names the element (QEMU says Parameter 'null')",
    "add policy preferred-many": "hostmem's extra policies (preferred-many, "
                                 "weighted-interleave, local)",
    "del pm": "follows from 'add policy preferred-many'",
    "add file offset": "offset is a memory-backend-file property (QEMU 8.1+)",
    "del fo": "follows from 'add file offset'",
    "del f9": "follows from 'add file odd size'",
    "list root": "no /machine or /chardevs: hostmem has no machine, only /objects",
    "add file odd size": "size must be a multiple of the file's page size "
                         "(QEMU rounds silently)",
    "set size string": "hostmem's message names the object (as 'set live size')",
    "set reserve": "hostmem's message names the object and property",
    "set nodes [0]": "placement alone on a live backend is refused, naming the rebind",
    "parse error keyword": "JSON parse error text is serde_json's",
    "parse error stray }": "JSON parse error text is serde_json's",
    "parse error trailing comma": "JSON parse error text is serde_json's",
}

# Replies compared only for shape: the version numbers and package are hostmem's own.
SHAPE_ONLY = {"query-version", "two on one line"}


def normalise(label, reply):
    """Ordering QEMU leaves to a hash table, and values that may vary."""
    if reply is None:
        return None
    reply = json.loads(json.dumps(reply))
    reply.pop("timestamp", None)
    ret = reply.get("return")
    if isinstance(ret, list) and ret and isinstance(ret[0], dict):
        if "id" in ret[0]:
            ret.sort(key=lambda m: m["id"])
        elif set(ret[0]) == {"name", "type"}:
            ret.sort(key=lambda m: m["name"])
        elif set(ret[0]) == {"name"}:
            # query-commands: QEMU has hundreds; ours must be among them, except ours.
            ours = [m["name"] for m in ret]
            reply["return"] = sorted(n for n in ours if not n.startswith("__org.hostmem_"))
    if label in SHAPE_ONLY and "return" in reply:
        reply["return"] = shape(reply["return"])
    return reply


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v[:1]]
    return type(v).__name__


def run_script(server, script):
    r = Raw(server.sock, negotiate=False)
    greeting = r.greeting
    replies = []
    for label, req in script:
        r.send(req if isinstance(req, (bytes, dict, list)) else json.dumps(req) + "\n")
        replies.append((label, r.read()))
        if label == "two on one line":
            replies.append((label + " (2nd)", r.read()))
    r.close()
    return greeting, replies


def compare(label, ours, qemu):
    """None when equivalent, else a one-line description of the difference."""
    a, b = normalise(label, ours), normalise(label, qemu)
    if label == "query-commands" and a and b:
        missing = set(a["return"]) - set(b["return"])
        return f"hostmem has commands QEMU lacks: {missing}" if missing else None
    if a == b:
        return None
    if (a is None) != (b is None):
        return f"one side closed: hostmem={a} qemu={b}"
    kind = lambda m: "error" if "error" in m else "return"
    if kind(a) != kind(b):
        return f"{kind(a)} vs {kind(b)}: hostmem={a} qemu={b}"
    if kind(a) == "error" and a["error"]["class"] != b["error"]["class"]:
        return f"class {a['error']['class']} vs {b['error']['class']}"
    return f"hostmem={json.dumps(a)[:300]} qemu={json.dumps(b)[:300]}"


@pytest.fixture(scope="module")
def results():
    from conftest import short_dir
    out = {}
    for name, script in SCRIPTS.items():
        d = short_dir()
        qemu = start_qemu(d / "qemu.sock")
        hm = start_hostmem(d / "hostmem.sock")
        try:
            out[name] = (run_script(hm, script), run_script(qemu, script))
        finally:
            assert qemu.wait() == 0     # every script ends with quit
            assert hm.wait() == 0
    return out


def test_greetings_have_the_same_shape(results):
    for name, ((ours, _), (qemu, _)) in results.items():
        assert shape(ours) == shape(qemu), name
        assert ours["QMP"]["capabilities"] == qemu["QMP"]["capabilities"] == ["oob"]


def test_every_request_answers_like_qemu_or_the_difference_is_intended(results):
    compared, differ, unlisted, stale = 0, [], [], []
    for name, ((_, ours), (_, qemu)) in results.items():
        assert [label for label, _ in ours] == [label for label, _ in qemu]
        for (label, a), (_, b) in zip(ours, qemu):
            compared += 1
            diff = compare(label, a, b)
            key = label.removesuffix(" (2nd)")
            if diff is None:
                if key in INTENDED and not label.endswith("(2nd)"):
                    stale.append(label)
                continue
            differ.append(label)
            if key not in INTENDED:
                unlisted.append(f"{name} / {label}: {diff}")
    line = (f"differential: {compared} requests compared, {len(differ)} differ"
            + (" (all intended)" if not unlisted else f", {len(unlisted)} not intended"))
    SUMMARY.append(line)
    print(line)
    assert not unlisted, "differences not in INTENDED:\n" + "\n".join(unlisted)
    assert not stale, f"listed in INTENDED but answered like QEMU: {stale}"
