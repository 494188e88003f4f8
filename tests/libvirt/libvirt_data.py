"""libvirt's .args files read into object sets, and each set rewritten for this host
(only what cannot exist here: README.md, "Rewrites"). Part of libvirt_objects.py.
"""

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SIZE_CAP = 64 * MIB


def die(msg):
    print(f"libvirt-objects: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- the host

def parse_list(text):
    """A sysfs list such as `0-3,8,10-11`."""
    out = []
    for part in text.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


class Host:
    def __init__(self):
        self.cpus = parse_list(Path("/sys/devices/system/cpu/online").read_text())
        node = Path("/sys/devices/system/node")
        mem = node / "has_memory"
        self.nodes = parse_list((mem if mem.exists() else node / "online").read_text()) \
            if node.exists() else [0]
        self.hugepage_sizes = []
        hp = Path("/sys/kernel/mm/hugepages")
        if hp.exists():
            for d in hp.iterdir():
                m = re.fullmatch(r"hugepages-(\d+)kB", d.name)
                if m:
                    self.hugepage_sizes.append(int(m.group(1)) * KIB)
        self.default_hugepage = None
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Hugepagesize:"):
                self.default_hugepage = int(line.split()[1]) * KIB


def human(n):
    for unit, name in ((GIB, "G"), (MIB, "M"), (KIB, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


# ---------------------------------------------------------------- libvirt's .args

def split_args_file(text):
    """The argv of a libvirt .args file (shell words; `\\`-newline continues a line)."""
    return shlex.split(text.replace("\\\n", " "))


def split_keyval(text):
    """QEMU keyval `a=b,c=d` (`,,` is a literal comma) into [(key, value)]."""
    items, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    items.append(cur)
    pairs = []
    for n, item in enumerate(items):
        k, eq, v = item.partition("=")
        if not eq:
            if n == 0:  # the implied key: the type
                k, v = "qom-type", item
            else:
                v = "on"
        pairs.append((k, v))
    return pairs


def join_keyval(pairs):
    out = []
    for n, (k, v) in enumerate(pairs):
        v = v.replace(",", ",,")
        out.append(v if (n == 0 and k == "qom-type") else f"{k}={v}")
    return ",".join(out)


@dataclass
class Obj:
    text: str  # the -object argument exactly as libvirt wrote it
    form: str  # "json" or "keyval"
    qom_type: str
    id: str
    props: object  # json: dict (QAPI types); keyval: [(key, value)] strings

    def get(self, key, default=None):
        if self.form == "json":
            return self.props.get(key, default)
        for k, v in self.props:
            if k == key:
                return v
        return default


def parse_object(text):
    if text.lstrip().startswith("{"):
        props = json.loads(text)
        return Obj(text, "json", props.get("qom-type", ""), str(props.get("id", "")), props)
    pairs = split_keyval(text)
    d = dict(pairs)
    return Obj(text, "keyval", d.get("qom-type", ""), d.get("id", ""), pairs)


def wanted(obj):
    return obj.qom_type.startswith("memory-backend-") or obj.qom_type == "thread-context"


def collect(data_dir):
    """{(obj text, ...): [file, ...]}: distinct object sets and where they occur."""
    files = sorted(Path(data_dir).glob("*.args"))
    if not files:
        die(f"no *.args files in {data_dir}")
    sets, objects = {}, set()
    for f in files:
        argv = split_args_file(f.read_text())
        objs = [parse_object(argv[i + 1]) for i, a in enumerate(argv[:-1])
                if a in ("-object", "--object")]
        objs = [o for o in objs if wanted(o)]
        contexts = {o.id: o for o in objs if o.qom_type == "thread-context"}
        used = set()
        for o in objs:
            if o.qom_type == "thread-context":
                continue
            ctx = o.get("prealloc-context")
            group = []
            if ctx is not None:
                if ctx in contexts:
                    group.append(contexts[ctx])
                    used.add(ctx)
                # a context named but absent stays absent: QEMU must refuse that too
            group.append(o)
            key = tuple(g.text for g in group)
            sets.setdefault(key, []).append(f.name)
            objects.update(key)
        for cid, c in contexts.items():
            if cid not in used:
                sets.setdefault((c.text,), []).append(f.name)
                objects.add(c.text)
    return files, objects, sets


# ---------------------------------------------------------------- rewriting

HUGE_DIR_RE = re.compile(r"^/dev/hugepages(\d+[KMG])?(/|$)")


def parse_size(v):
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"(\d+)([kKMGTPE]?)[bB]?", str(v).strip())
    if not m:
        raise ValueError(f"size {v!r}")
    mult = {"": 1, "k": KIB, "K": KIB, "M": MIB, "G": GIB, "T": GIB << 10,
            "P": GIB << 20, "E": GIB << 30}[m.group(2)]
    return int(m.group(1)) * mult


def parse_bool(v):
    if isinstance(v, bool):
        return v
    return str(v) in ("on", "yes", "true", "y")


@dataclass
class Template:
    """A set ready to run: objects with @PLACEHOLDER@ paths, what it needs, what changed."""
    objs: list  # [(form, text)] in creation order
    qmp_args: list  # [dict] for object-add, or None (keyval: no QMP form)
    ids: list
    backend_ids: list
    hugepages: dict = field(default_factory=dict)  # page size -> pages needed
    changes: list = field(default_factory=list)
    needs: str = ""  # why it cannot run here ("" = it can)


def placeholder_for_dir(page):
    return f"@HUGETLBFS-{page}@"


def rewrite(key, host):
    objs = [parse_object(t) for t in key]
    out, qmp, ids, backends = [], [], [], []
    t = Template([], [], [], [])
    for o in objs:
        changes = []
        page = 4096  # the unit the size must stay a multiple of
        new = {}  # key -> new value (JSON-typed)
        mem_path = o.get("mem-path")
        if mem_path is not None:
            m = HUGE_DIR_RE.match(mem_path)
            if m:
                # libvirt's per-domain directory on a hugetlbfs mount of that page size
                page = parse_size(m.group(1)) if m.group(1) else host.default_hugepage
                if page is None or page not in host.hugepage_sizes:
                    t.needs = f"needs hugetlbfs of page size {human(page or 0)}"
                new["mem-path"] = placeholder_for_dir(page)
            elif mem_path.startswith("/dev/shm/"):
                new["mem-path"] = "@SHM@/" + os.path.basename(mem_path)
            else:
                new["mem-path"] = "@FILES@/" + os.path.basename(mem_path)
        hugetlb = page if page > 4096 else None  # the huge page size it maps with
        if o.qom_type == "memory-backend-memfd" and parse_bool(o.get("hugetlb", False)):
            page = hugetlb = parse_size(o.get("hugetlbsize", 0)) or host.default_hugepage
            if page not in host.hugepage_sizes:
                t.needs = f"needs huge pages of size {human(page)}"
        if o.get("align") is not None:
            page = max(page, parse_size(o.get("align")))
        if o.get("size") is not None:
            size = parse_size(o.get("size"))
            cap = max(SIZE_CAP, page)
            if size > cap:
                # keep it a multiple of the page size / alignment, or keep the remainder
                # when libvirt's size was not one (QEMU refuses those: keep that case)
                new["size"] = (cap // page) * page + size % page
            if hugetlb:
                t.hugepages[hugetlb] = t.hugepages.get(hugetlb, 0) \
                    + -(-new.get("size", size) // hugetlb)
        for prop, pool in (("host-nodes", host.nodes), ("node-affinity", host.nodes),
                           ("cpu-affinity", host.cpus)):
            v = o.get(prop)
            if v is None:
                continue
            vals = v if isinstance(v, list) else parse_list(str(v))
            mapped = []
            for x in vals:
                y = x if x in pool else pool[x % len(pool)]
                if y not in mapped:
                    mapped.append(y)
            if mapped != vals:
                new[prop] = mapped
        for k, v in new.items():
            changes.append(f"{o.id}.{k}: {o.get(k)!r} -> {v!r}")
        if o.form == "json":
            if json.dumps(o.props, separators=(",", ":")) != o.text:
                die(f"libvirt's JSON is not in compact form, cannot keep it byte for "
                    f"byte: {o.text}")
            d = dict(o.props)
            d.update(new)
            text = json.dumps(d, separators=(",", ":"))
            qmp.append(d)
        else:
            pairs, done = [], set()
            for k, v in o.props:
                if k not in new:
                    pairs.append((k, v))
                elif k not in done:  # a rewritten list becomes repeated keys k=a,k=b
                    done.add(k)
                    nv = new[k]
                    pairs.extend((k, str(x)) for x in (nv if isinstance(nv, list) else [nv]))
            text = join_keyval(pairs)
            qmp = None
        out.append((o.form, text))
        ids.append(o.id)
        if o.qom_type.startswith("memory-backend-"):
            backends.append(o.id)
        t.changes.extend(changes)
    t.objs, t.qmp_args, t.ids, t.backend_ids = out, qmp, ids, backends
    return t
