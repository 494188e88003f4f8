"""The request scripts of the differential test (test_differential.py): each is sent
unchanged to QEMU 10.0 and to `hostmem run --qmp`, label by label.

Scripts: every request of shared/reference/qemu-7.2-qmp-transcript.txt (history: the
first reference, 7.2; its requests stay, their answers are now QEMU 10.0's), probes,
what QEMU 8.x-10 added (memory-backend-shm, file offset and rom, the page-multiple size
rule, thread-context and prealloc-context, x-use-canonical-path-for-ramblock-id, pmem
with share=off), and the same objects given at startup as `-object` in keyval and in
JSON (libvirt's spelling). Labels are unique across scripts (the startup scripts'
labels start with "kv " and "json "): the intended differences are keyed by them.
"""

import json

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

# Probes the transcript does not show (first written against QEMU 7.2; the answers
# compared are QEMU 10.0's).
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

SHM = "memory-backend-shm"
FILE = "memory-backend-file"
MEMFD = "memory-backend-memfd"
TC = "thread-context"
# Replaced in every request and startup argument by the script's own temporary
# directory, which holds ROM: a 1 MiB file made before the servers start.
DIR = "@DIR@"
ROM = f"{DIR}/rom"


def rom_matrix():
    """Every rom x readonly x share on an existing file (QEMU 8.2's rules); the
    objects QEMU creates are read back (rom=auto resolves) and deleted again."""
    out, onoff = [], {True: "on", False: "off"}
    for rom in ("on", "off", "auto"):
        for ro in (True, False):
            for sh in (True, False):
                tag = f"rom={rom} readonly={onoff[ro]} share={onoff[sh]}"
                id = f"rom-{rom}-{int(ro)}{int(sh)}"
                out.append((f"add {tag}", add(id, FILE, size=MIB, rom=rom, readonly=ro,
                                              share=sh, **{"mem-path": ROM})))
                out.append((f"get {tag}", get(f"/objects/{id}", "rom")))
                out.append((f"del {tag}", cmd("object-del", id=id)))
    return out


# What QEMU 8.x-10.0 added or changed for these objects, over QMP object-add.
QEMU10 = [
    ("caps", cmd("qmp_capabilities")),
    # memory-backend-shm (9.1)
    ("add shm", add("s1", SHM, size=MIB)),
    ("get shm share", get("/objects/s1", "share")),
    ("list shm", cmd("qom-list", path="/objects/s1")),
    ("add shm share off", add("s2", SHM, size=MIB, share=False)),
    ("add shm odd size", add("s3", SHM, size=MIB + 1)),
    ("add shm reserve off", add("s4", SHM, size=MIB, reserve=False)),
    ("add shm bind 0 prealloc", add("s5", SHM, size=MIB, policy="bind", prealloc=True,
                                    **{"host-nodes": [0]})),
    # sizes that are not whole pages (9.1 refuses them for fd-backed memory)
    ("add memfd odd size", add("d2", MEMFD, size=MIB + 1)),
    ("add ram odd size", add("r2", size=MIB + 1)),
    ("get ram odd size", get("/objects/r2", "size")),
    # memfd and ram corners
    ("add memfd hugetlbsize 3M", add("d3", MEMFD, size=MIB, hugetlb=True,
                                     hugetlbsize=3 * MIB)),
    ("add memfd hugetlbsize without hugetlb", add("d4", MEMFD, size=MIB,
                                                  hugetlbsize=2 * MIB)),
    ("del memfd hugetlbsize without hugetlb", cmd("object-del", id="d4")),
    ("add memfd seal off share off", add("d5", MEMFD, size=MIB, seal=False, share=False)),
    ("add memfd reserve off", add("d6", MEMFD, size=MIB, reserve=False)),
    ("add ram share reserve off", add("r3", size=MIB, share=True, reserve=False)),
    # file: offset (8.1), align, readonly
    ("add file offset past end", add("o1", FILE, size=MIB, offset=4096,
                                     **{"mem-path": ROM})),
    ("add file offset readonly past end", add("o2", FILE, size=MIB, offset=4096,
                                              readonly=True, **{"mem-path": ROM})),
    ("add file offset unaligned", add("o3", FILE, size=MIB, offset=4097,
                                      **{"mem-path": DIR})),
    ("add file offset 2^63", add("o4", FILE, size=MIB, offset=1 << 63,
                                 **{"mem-path": DIR})),
    ("add file offset half", add("o5", FILE, size=MIB // 2, offset=MIB // 2,
                                 **{"mem-path": ROM})),
    ("get file offset", get("/objects/o5", "offset")),
    ("add file align 3", add("a1", FILE, size=MIB, align=3, **{"mem-path": DIR})),
    ("add file align 2M", add("a2", FILE, size=4 * MIB, align=2 * MIB,
                              **{"mem-path": DIR})),
    ("get file align", get("/objects/a2", "align")),
    # fixed properties of live backends
    ("set live memfd seal", set_("/objects/d5", "seal", True)),
    ("set live memfd hugetlb", set_("/objects/d5", "hugetlb", True)),
    ("set live file mem-path", set_("/objects/o5", "mem-path", "/x")),
    ("set live file offset", set_("/objects/o5", "offset", 4096)),
    ("set live file rom", set_("/objects/o5", "rom", "on")),
    ("set live file pmem", set_("/objects/o5", "pmem", True)),
    ("add file readonly dir", add("o6", FILE, size=MIB, readonly=True,
                                  **{"mem-path": DIR})),
    ("add file reserve off", add("o7", FILE, size=MIB, reserve=False,
                                 **{"mem-path": DIR})),
    # pmem: libvirt writes pmem=on for every NVDIMM, with share=off as often as not
    ("add pmem share off", add("p1", FILE, size=MIB, pmem=True, share=False,
                               **{"mem-path": DIR})),
    ("get pmem share off", get("/objects/p1", "pmem")),
    ("add pmem share on without dax", add("p2", FILE, size=MIB, pmem=True, share=True,
                                          **{"mem-path": DIR})),
    ("get pmem share on", get("/objects/p2", "pmem")),
    # thread-context objects
    ("add tc node-affinity", add("tc0", TC, **{"node-affinity": [0]})),
    ("get tc node-affinity", get("/objects/tc0", "node-affinity")),
    ("get tc cpu-affinity of node 0", get("/objects/tc0", "cpu-affinity")),
    ("get tc thread-id", get("/objects/tc0", "thread-id")),
    ("list tc", cmd("qom-list", path="/objects/tc0")),
    ("add tc cpu-affinity", add("tc1", TC, **{"cpu-affinity": [0]})),
    ("get tc cpu-affinity", get("/objects/tc1", "cpu-affinity")),
    ("add tc without affinity", add("tc2", TC)),
    ("add tc both affinities", add("tc3", TC, **{"cpu-affinity": [0],
                                                 "node-affinity": [0]})),
    ("add tc cpu 4000", add("tc4", TC, **{"cpu-affinity": [4000]})),
    ("add tc absent node 5", add("tc5", TC, **{"node-affinity": [5]})),
    ("add tc empty cpu list", add("tc6", TC, **{"cpu-affinity": []})),
    ("add tc cpu-affinity string", add("tc7", TC, **{"cpu-affinity": "0"})),
    ("add tc size", add("tc8", TC, size=MIB)),
    # prealloc-context: a backend's prealloc threads run in a thread-context
    ("add ram prealloc-context", add("m1", size=MIB, prealloc=True,
                                     **{"prealloc-context": "tc0"})),
    ("get prealloc-context", get("/objects/m1", "prealloc-context")),
    ("add memfd prealloc-context path", add("m2", MEMFD, size=MIB, prealloc=True,
                                            **{"prealloc-context": "/objects/tc1"})),
    ("get prealloc-context path", get("/objects/m2", "prealloc-context")),
    ("get prealloc-context unset", get("/objects/s1", "prealloc-context")),
    ("add prealloc-context missing", add("m3", size=MIB,
                                         **{"prealloc-context": "nope"})),
    ("add prealloc-context not a tc", add("m4", size=MIB,
                                          **{"prealloc-context": "s1"})),
    ("add prealloc-context int", add("m5", size=MIB, **{"prealloc-context": 5})),
    # x-use-canonical-path-for-ramblock-id (libvirt sets it for migration compatibility)
    ("add x-use-canonical-path", add("m6", size=MIB,
                                     **{"x-use-canonical-path-for-ramblock-id": True})),
    ("get x-use-canonical-path", get("/objects/m6", "x-use-canonical-path-for-ramblock-id")),
    ("get x-use-canonical-path default", get("/objects/s1",
                                             "x-use-canonical-path-for-ramblock-id")),
    ("add x-use-canonical-path string", add("m7", size=MIB,
                                            **{"x-use-canonical-path-for-ramblock-id": "on"})),
    ("list objects 10", cmd("qom-list", path="/objects")),
    ("query-memdev 10", cmd("query-memdev")),
    # deleting a thread-context that a backend names
    ("del tc in use", cmd("object-del", id="tc0")),
    ("get prealloc-context of deleted tc", get("/objects/m1", "prealloc-context")),
    ("del m1 after its tc", cmd("object-del", id="m1")),
    ("del tc1", cmd("object-del", id="tc1")),
    ("del tc1 again", cmd("object-del", id="tc1")),
    ("del p1", cmd("object-del", id="p1")),
    ("del s1", cmd("object-del", id="s1")),
    *rom_matrix(),
    ("query-memdev 10 end", cmd("query-memdev")),
    ("quit", cmd("quit")),
]


def startup_requests(sp):
    """What is asked of the objects given at startup (STARTUP_KEYVAL/JSON); `sp`
    keeps the labels of the two scripts apart."""
    return [
        ("caps", cmd("qmp_capabilities")),
        (f"{sp} get tc node cpu-affinity", get("/objects/tcn", "cpu-affinity")),
        (f"{sp} get tc cpu cpu-affinity", get("/objects/tcc", "cpu-affinity")),
        (f"{sp} get ram prealloc-context", get("/objects/ram-node0", "prealloc-context")),
        (f"{sp} get memfd prealloc-context", get("/objects/memfd-node0", "prealloc-context")),
        (f"{sp} get ram x-use-canonical-path", get("/objects/ram-node0",
                                                   "x-use-canonical-path-for-ramblock-id")),
        (f"{sp} get file x-use-canonical-path", get("/objects/nvdimm0",
                                                    "x-use-canonical-path-for-ramblock-id")),
        (f"{sp} get file pmem", get("/objects/nvdimm0", "pmem")),
        (f"{sp} get file share", get("/objects/nvdimm0", "share")),
        (f"{sp} get shm policy", get("/objects/shm0", "policy")),
        (f"{sp} get shm host-nodes", get("/objects/shm0", "host-nodes")),
        (f"{sp} list objects", cmd("qom-list", path="/objects")),
        (f"{sp} query-memdev", cmd("query-memdev")),
        (f"{sp} del tc in use", cmd("object-del", id="tcn")),
        (f"{sp} del ram", cmd("object-del", id="ram-node0")),
        (f"{sp} del memfd", cmd("object-del", id="memfd-node0")),
        (f"{sp} del file", cmd("object-del", id="nvdimm0")),
        (f"{sp} del tc", cmd("object-del", id="tcc")),
        (f"{sp} query-memdev after del", cmd("query-memdev")),
        ("quit", cmd("quit")),
    ]


# The same objects at startup, as a person writes them (keyval) and as libvirt does
# (JSON with QAPI types: numbers, true/false, arrays), prealloc threads in contexts.
STARTUP_KEYVAL = [
    "-object", "thread-context,id=tcn,node-affinity=0",
    "-object", "thread-context,id=tcc,cpu-affinity=0-0",
    "-object", "memory-backend-ram,id=ram-node0,size=2M,prealloc=on,prealloc-context=tcn,"
               "x-use-canonical-path-for-ramblock-id=off",
    "-object", "memory-backend-memfd,id=memfd-node0,size=2M,policy=bind,host-nodes=0,"
               "prealloc=on,prealloc-context=tcc,prealloc-threads=2",
    "-object", f"memory-backend-file,id=nvdimm0,size=2M,mem-path={DIR},pmem=on,share=off,"
               "x-use-canonical-path-for-ramblock-id=on",
    "-object", "memory-backend-shm,id=shm0,size=2M,policy=preferred,host-nodes=0-0",
]
STARTUP_JSON = [a for o in [
    {"qom-type": TC, "id": "tcn", "node-affinity": [0]},
    {"qom-type": TC, "id": "tcc", "cpu-affinity": [0]},
    {"qom-type": RAM, "id": "ram-node0", "size": 2 * MIB, "prealloc": True,
     "prealloc-context": "tcn", "x-use-canonical-path-for-ramblock-id": False},
    {"qom-type": MEMFD, "id": "memfd-node0", "size": 2 * MIB, "policy": "bind",
     "host-nodes": [0], "prealloc": True, "prealloc-context": "tcc", "prealloc-threads": 2},
    {"qom-type": FILE, "id": "nvdimm0", "size": 2 * MIB, "mem-path": DIR, "pmem": True,
     "share": False, "x-use-canonical-path-for-ramblock-id": True},
    {"qom-type": SHM, "id": "shm0", "size": 2 * MIB, "policy": "preferred",
     "host-nodes": [0]},
] for a in ("-object", json.dumps(o))]

# name -> (startup arguments of both servers, requests)
SCRIPTS = {
    "transcript-1": ([], TRANSCRIPT_1),
    "transcript-2": ([], TRANSCRIPT_2),
    "probes": ([], PROBES),
    "qemu-10": ([], QEMU10),
    "startup-keyval": (STARTUP_KEYVAL, startup_requests("kv")),
    "startup-json": (STARTUP_JSON, startup_requests("json")),
}
