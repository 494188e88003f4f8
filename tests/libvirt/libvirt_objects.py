#!/usr/bin/env python3
"""libvirt's own memory objects, run through QEMU 10 and hostmem side by side.

Input: the QEMU command lines libvirt's test suite expects it to generate
(tests/qemuxmlconfdata/*.args of the libvirt source; tests/libvirt/run.sh fetches
them). Every distinct `-object` whose qom-type is memory-backend-* or thread-context
is taken; a backend is kept together with the thread-context objects its
`prealloc-context` names (a backend must be created with its contexts). That group
is an *object set*, the unit this test runs and counts.

Only what cannot exist on this host is rewritten (see README.md next to this file):
mem-path, sizes above 64 MiB, host nodes and CPUs the host lacks. Everything else
is passed byte for byte.

Each set goes through two paths, on both programs:
  cli  one process per set, the objects as `-object` arguments (as libvirt runs them):
       `qemu-system-x86_64 -machine none -nodefaults -display none -qmp stdio -object ...`
       and `hostmem run -qmp unix:SOCK,server=on,wait=off -object ...`;
  qmp  one long-lived server of each, the same JSON given to `object-add`, read back,
       then `object-del` (JSON objects only; keyval ones have no QMP form).
For a set both accept, every backend's query-memdev entry and `qom-get` of every
property QEMU lists (qom-list, child<> properties excepted) must be the same.

Exit status 1 when QEMU accepts a set that hostmem refuses, hostmem accepts a set
QEMU refuses, or a read-back value differs; the list says which and why.
Python standard library only.
"""

import argparse
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SIZE_CAP = 64 * MIB
# Properties whose value is the process's own (a thread id): compared by type only.
OWN_VALUE = {("thread-context", "thread-id")}


def cpus_usable():
    return len(os.sched_getaffinity(0))


# Differences hostmem means to have (DESIGN.md says so). Each: the qom-get property,
# when it applies (the object did not set the property itself), the values each side
# must then show, and why. Anything else that differs is a mismatch.
INTENDED = {
    "prealloc-threads": (
        lambda qv, hv: qv == 1 and hv == cpus_usable(),
        "default prealloc-threads: QEMU 1, hostmem the CPUs it may run on "
        "(DESIGN.md §2 and §4)"),
}
QMP_TIMEOUT = 30  # seconds for one reply (a preallocation of 1 GiB takes a few)


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


# ---------------------------------------------------------------- QMP

class QmpError(Exception):
    pass


class Qmp:
    """A minimal synchronous QMP client over a pipe pair or a Unix socket."""

    def __init__(self, rfd, wfile, close=None):
        self.rfd, self.wfile, self._close = rfd, wfile, close
        self.buf = b""
        self.greeting = self.read(timeout=QMP_TIMEOUT)
        if self.greeting is None:
            raise QmpError("no greeting (the process ended)")
        r = self.cmd("qmp_capabilities")
        if r[0] != "ok":
            raise QmpError(f"qmp_capabilities: {r}")

    @classmethod
    def unix(cls, path, proc=None, timeout=QMP_TIMEOUT):
        """Connect, retrying while the socket exists but is not listening yet (between
        bind and listen) and `proc` is still running."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                s.close()
                if (proc is not None and proc.poll() is not None) \
                        or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        f = s.makefile("wb")
        return cls(s.fileno(), f, close=lambda: (f.close(), s.close()))

    def read(self, timeout=QMP_TIMEOUT):
        """The next non-event message; None at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QmpError("no reply within %d s" % timeout)
                r, _, _ = select.select([self.rfd], [], [], left)
                if not r:
                    continue
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            if not line.strip():
                continue
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, execute, **args):
        """("ok", value) or ("err", class, desc)."""
        req = {"execute": execute}
        if args:
            req["arguments"] = args
        try:
            self.wfile.write(json.dumps(req).encode() + b"\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise QmpError(f"{execute}: connection lost ({e})")
        try:
            msg = self.read()
        except QmpError as e:
            raise QmpError(f"{execute}: {e}")
        if msg is None:
            raise QmpError(f"{execute}: connection closed")
        if "return" in msg:
            return ("ok", msg["return"])
        err = msg.get("error", {})
        return ("err", err.get("class"), err.get("desc"))

    def close(self):
        if self._close:
            self._close()


def readback(q, ids, backend_ids, extra_props=None):
    """What a program says about the set's objects: query-memdev entries of the set's
    backends, and per object its qom-list and qom-get of each listed property (plus
    `extra_props`, the properties the other program listed)."""
    rb = {"memdev": {}, "props": {}, "list": {}}
    r = q.cmd("query-memdev")
    if r[0] == "ok":
        for e in r[1]:
            if e.get("id") in backend_ids:
                rb["memdev"][e["id"]] = e
    else:
        rb["memdev"] = {"error": r[1:]}
    for oid in ids:
        path = f"/objects/{oid}"
        r = q.cmd("qom-list", path=path)
        listed = {p["name"]: p["type"] for p in r[1]} if r[0] == "ok" else {}
        rb["list"][oid] = listed if r[0] == "ok" else {"error": r[1:]}
        names = set(n for n, ty in listed.items() if not ty.startswith("child<"))
        names |= set((extra_props or {}).get(oid, ()))
        for name in sorted(names):
            g = q.cmd("qom-get", path=path, property=name)
            rb["props"][(oid, name)] = ("ok", g[1]) if g[0] == "ok" else ("err", g[2])
    return rb


# ---------------------------------------------------------------- the two programs

@dataclass
class Outcome:
    accepted: bool
    message: str = ""  # refusal message
    warnings: list = field(default_factory=list)
    rb: dict = None
    cleanup: str = ""  # object-del left something behind (qmp phase)


def clean_message(prog, text, objs):
    """The refusal from stderr, without the program name and the -object echo."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # the last error line; both prefix `PROG: -object TEXT: `
    for ln in reversed(lines):
        for _, t in objs:
            for pre in (f"{prog}: -object {t}: ",):
                if ln.startswith(pre):
                    return ln[len(pre):]
        if ln.startswith(f"{prog}: ") and "warning:" not in ln:
            return ln[len(prog) + 2:]
    return " | ".join(lines[-3:]) or "(no message)"


def warnings_of(prog, text):
    out = []
    for ln in text.splitlines():
        low = ln.lower()
        if "warning" in low:
            ln = ln.removeprefix(f"{prog}: ")
            out.append(ln)
    return out


def stderr_of(errf):
    errf.seek(0)
    return errf.read().decode(errors="replace")


def refused(prog, errf, objs):
    """The set was refused: the message and warnings `prog` wrote to `errf`."""
    err = stderr_of(errf)
    return Outcome(False, clean_message(prog, err, objs), warnings_of(prog, err))


def accepted(prog, errf, rb):
    """The set was made and read back as `rb`; the warnings `prog` wrote to `errf`."""
    return Outcome(True, warnings=warnings_of(prog, stderr_of(errf)), rb=rb)


def read_or_kill(q, p, errf, ids, backend_ids, extra_props=None):
    """readback(), or the process killed and the error given with its last stderr."""
    try:
        return readback(q, ids, backend_ids, extra_props)
    except QmpError as e:
        p.kill()
        p.wait()
        raise QmpError(f"{e}; stderr: {stderr_of(errf)[-300:]}")


class Runner:
    def __init__(self, qemu, hostmem, workdir):
        self.qemu, self.hostmem, self.work = qemu, hostmem, Path(workdir)
        self.qemu_name = os.path.basename(qemu)

    def qemu_cli(self, objs, ids, backend_ids):
        argv = [self.qemu, "-machine", "none", "-nodefaults", "-display", "none",
                "-qmp", "stdio"]
        for _, t in objs:
            argv += ["-object", t]
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=errf)
        try:
            try:
                q = Qmp(p.stdout.fileno(), p.stdin)
            except QmpError:
                p.wait(timeout=60)
                return refused(self.qemu_name, errf, objs)
            rb = read_or_kill(q, p, errf, ids, backend_ids)
            q.cmd("quit")
            p.wait(timeout=60)
            return accepted(self.qemu_name, errf, rb)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def hostmem_cli(self, objs, ids, backend_ids, extra_props):
        sockdir = Path(tempfile.mkdtemp(prefix="hmlv", dir="/tmp"))
        sock = sockdir / "qmp.sock"
        argv = [self.hostmem, "run", "-qmp", f"unix:{sock},server=on,wait=off"]
        for _, t in objs:
            argv += ["-object", t]
        errf, outf = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=outf, stderr=errf)
        try:
            deadline = time.monotonic() + QMP_TIMEOUT
            while not sock.exists() and p.poll() is None:
                if time.monotonic() > deadline:
                    raise QmpError("hostmem did not listen within %d s" % QMP_TIMEOUT)
                time.sleep(0.002)
            if p.poll() is not None and not sock.exists():
                return refused("hostmem", errf, objs)
            try:
                q = Qmp.unix(sock, p)
            except (QmpError, OSError):
                if p.wait(timeout=60) != 0:  # gone between listening and our connect
                    return refused("hostmem", errf, objs)
                raise
            rb = read_or_kill(q, p, errf, ids, backend_ids, extra_props)
            q.cmd("quit")
            q.close()
            p.wait(timeout=60)
            return accepted("hostmem", errf, rb)
        finally:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            shutil.rmtree(sockdir, ignore_errors=True)


class Server:
    """A long-lived QMP server (QEMU on stdio, hostmem on a socket) for object-add."""

    def __init__(self, kind, runner):
        self.kind, self.runner = kind, runner
        self.p = self.q = None
        self.start()

    def start(self):
        r = self.runner
        self.errf = tempfile.TemporaryFile()
        if self.kind == "qemu":
            self.p = subprocess.Popen(
                [r.qemu, "-machine", "none", "-nodefaults", "-display", "none",
                 "-qmp", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.errf)
            self.q = Qmp(self.p.stdout.fileno(), self.p.stdin)
        else:
            self.sockdir = Path(tempfile.mkdtemp(prefix="hmlv", dir="/tmp"))
            sock = self.sockdir / "qmp.sock"
            self.p = subprocess.Popen(
                [r.hostmem, "run", "-qmp", f"unix:{sock},server=on,wait=off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errf)
            deadline = time.monotonic() + 30
            while not sock.exists():
                if self.p.poll() is not None or time.monotonic() > deadline:
                    die("hostmem -qmp did not start")
                time.sleep(0.002)
            self.q = Qmp.unix(sock, self.p)

    def stderr_mark(self):
        self.errf.seek(0, os.SEEK_END)
        return self.errf.tell()

    def stderr_since(self, mark):
        self.errf.seek(mark)
        return self.errf.read().decode(errors="replace")

    def stop(self, kill=False):
        if kill and self.p.poll() is None:
            self.p.kill()
        try:
            if self.q and self.p.poll() is None:
                self.q.cmd("quit")
        except (QmpError, OSError):
            pass
        if self.q:
            self.q.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        if self.kind == "hostmem":
            shutil.rmtree(self.sockdir, ignore_errors=True)

    def restart(self, kill=False):
        self.stop(kill)
        self.start()

    def run_set(self, qmp_args, ids, backend_ids, extra_props=None):
        """object-add each, read back, object-del in reverse; (Outcome, cleanup problem)."""
        prog = self.runner.qemu_name if self.kind == "qemu" else "hostmem"
        mark = self.stderr_mark()
        added, outcome = [], None
        for args in qmp_args:
            r = self.q.cmd("object-add", **args)
            if r[0] != "ok":
                outcome = Outcome(False, r[2])
                break
            added.append(args["id"])
        if outcome is None:
            outcome = Outcome(True, rb=readback(self.q, ids, backend_ids, extra_props))
        problem = ""
        for oid in reversed(added):
            r = self.q.cmd("object-del", id=oid)
            if r[0] != "ok":
                problem = f"object-del {oid}: {r[2]}"
        if not problem:
            left = self.q.cmd("qom-list", path="/objects")
            names = {p["name"] for p in left[1]} if left[0] == "ok" else set()
            if names & set(ids):
                problem = f"still in /objects after object-del: {sorted(names & set(ids))}"
        outcome.warnings = warnings_of(prog, self.stderr_since(mark))
        return outcome, problem


# ---------------------------------------------------------------- comparing

def normalize(v, subst):
    """Undo the run's path substitution so both programs' values read the same."""
    if isinstance(v, str):
        for ph, real in sorted(subst.items(), key=lambda kv: -len(kv[1])):
            v = v.replace(real, ph)
        return v
    if isinstance(v, list):
        return [normalize(x, subst) for x in v]
    if isinstance(v, dict):
        return {k: normalize(x, subst) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(normalize(x, subst) for x in v)
    return v


def show(v):
    return json.dumps(v) if not isinstance(v, tuple) else (
        json.dumps(v[1]) if v[0] == "ok" else f"error {json.dumps(v[1])}")


def compare(qrb, hrb, types, given):
    """([(cause, detail)] for every value that differs, [(reason, detail)] for the
    intended differences). `given`: id -> the properties the object sets itself."""
    out, intended = [], []
    compared = {"query-memdev": 0, "qom-list": 0, "qom-get": 0}
    qm, hm = qrb["memdev"], hrb["memdev"]
    if "error" in qm or "error" in hm:
        if qm != hm:
            out.append(("query-memdev fails", f"qemu {qm}, hostmem {hm}"))
    else:
        for bid, qe in qm.items():
            he = hm.get(bid)
            if he is None:
                out.append(("query-memdev: backend missing", bid))
                continue
            for k, v in qe.items():
                compared["query-memdev"] += 1
                if k not in he:
                    out.append((f"query-memdev: field {k} missing", f"{bid}: qemu {show(v)}"))
                elif he[k] != v:
                    out.append((f"query-memdev: {k} differs",
                                f"{bid}: qemu {show(v)}, hostmem {show(he[k])}"))
            for k in he:
                if k not in qe:
                    out.append((f"query-memdev: extra field {k}", f"{bid}: hostmem {show(he[k])}"))
    for oid, ql in qrb["list"].items():
        hl = hrb["list"].get(oid, {})
        if "error" in ql:
            continue
        if "error" in hl:
            out.append(("qom-list fails", f"{oid}: hostmem {hl['error']}"))
            continue
        for name, ty in ql.items():
            if ty.startswith("child<"):
                continue
            compared["qom-list"] += 1
            if name not in hl:
                out.append((f"qom-list: {name} not listed", f"{oid} (QEMU: {ty})"))
            elif hl[name] != ty:
                out.append((f"qom-list: {name} type differs",
                            f"{oid}: qemu {ty}, hostmem {hl[name]}"))
    for (oid, name), qv in qrb["props"].items():
        hv = hrb["props"].get((oid, name))
        if hv is None:
            continue
        compared["qom-get"] += 1
        if (name in INTENDED and name not in given[oid] and qv[0] == hv[0] == "ok"
                and INTENDED[name][0](qv[1], hv[1])):
            intended.append((INTENDED[name][1], f"{oid}: qemu {show(qv)}, hostmem {show(hv)}"))
            continue
        if (types[oid], name) in OWN_VALUE:
            ok = (qv[0] == hv[0] == "ok" and isinstance(qv[1], int) and isinstance(hv[1], int)
                  and hv[1] > 0) or (qv[0] == hv[0] == "err")
        else:
            ok = qv == hv
        if not ok:
            if hv[0] == "err" and qv[0] == "ok":
                cause = f"qom-get {name}: hostmem error"
            elif qv[0] == "err" and hv[0] == "ok":
                cause = f"qom-get {name}: readable in hostmem, not in QEMU"
            else:
                cause = f"qom-get {name} differs"
            out.append((cause, f"{oid}: qemu {show(qv)}, hostmem {show(hv)}"))
    return out, intended, compared


def message_cause(msg):
    """A refusal message with its specific values masked, to group refusals by cause."""
    m = re.sub(r"'[^']*'", "'…'", msg)
    m = re.sub(r"\b\d+\b", "N", m)
    return m


# ---------------------------------------------------------------- huge pages

class HugePages:
    """hugetlbfs mounts of each page size the sets need, and enough free pages in the
    pools (grown for the run and shrunk back by what was added)."""

    def __init__(self, root, host):
        self.root, self.host = Path(root), host
        self.mounts, self.added, self.missing = {}, {}, {}
        self.regrown, self.seen = False, {}

    def _dir(self, page):
        return Path(f"/sys/kernel/mm/hugepages/hugepages-{page // KIB}kB")

    def free(self, page):
        return int((self._dir(page) / "free_hugepages").read_text())

    def prepare(self, needs):
        for page, pages in sorted(needs.items()):
            mnt = self.root / f"hugetlbfs-{human(page)}"
            mnt.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={page}",
                                "none", str(mnt)], capture_output=True, text=True)
            if r.returncode != 0:
                self.missing[page] = f"cannot mount hugetlbfs pagesize={human(page)}: " \
                                     f"{r.stderr.strip()}"
                continue
            self.mounts[page] = mnt
            try:
                self.grow(page, pages - self.free(page))
            except OSError as e:
                self.missing[page] = f"cannot grow the {human(page)} pool: {e}"
                continue
            if self.free(page) < pages:
                self.missing[page] = (f"needs {pages} free {human(page)} huge pages, the "
                                      f"pool has {self.free(page)} free")

    def nr(self, page):
        return int((self._dir(page) / "nr_hugepages").read_text())

    def grow(self, page, short):
        """Add `short` pages to the pool (counted in `added`, to be given back). When
        the kernel finds fewer (no contiguous memory left for a 1 GiB page), compact
        memory once and ask again, rather than leave the sets that need them unrun."""
        for attempt in range(2):
            if short <= 0:
                return
            nr = self.nr(page)
            (self._dir(page) / "nr_hugepages").write_text(str(nr + short))
            got = self.nr(page) - nr
            self.added[page] = self.added.get(page, 0) + got
            short -= got
            if short > 0 and attempt == 0:
                Path("/proc/sys/vm/compact_memory").write_text("1")

    def ensure(self, needs, timeout=5.0):
        """Before a program runs a set: wait until the pools have its pages free again
        (QEMU frees a deleted backend's RAM block from its RCU thread, a moment after
        object-del), and grow a pool that another process shrank meanwhile. Remembers
        the pool sizes, for disturbed()."""
        deadline = time.monotonic() + timeout
        for page, pages in needs.items():
            if page not in self.mounts:
                continue
            while self.free(page) < pages and time.monotonic() < deadline:
                time.sleep(0.01)
            short = pages - self.free(page)
            if short > 0:
                self.regrown = True
                try:
                    self.grow(page, short)
                except OSError:
                    pass
        self.seen = {page: self.nr(page) for page in needs}

    def disturbed(self):
        """Did a pool change size since ensure(), or did ensure() have to grow it again
        (another process's test setting it)?"""
        return self.regrown or any(self.nr(page) != n for page, n in self.seen.items())

    def release(self):
        for page, n in self.added.items():
            f = self._dir(page) / "nr_hugepages"
            try:
                f.write_text(str(max(0, int(f.read_text()) - n)))
            except OSError as e:
                print(f"warning: could not shrink the {human(page)} pool back by {n}: {e}",
                      file=sys.stderr)
        for mnt in self.mounts.values():
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- the run

class Workspace:
    """Fresh mem-path directories for one run of one set by one program."""

    def __init__(self, root, shm_root, huge):
        self.root, self.shm_root, self.huge = Path(root), Path(shm_root), huge
        self.n = 0

    def subst(self, tag):
        self.n += 1
        name = f"{tag}-{self.n}"
        s = {"@FILES@": self.root / "files" / name, "@SHM@": self.shm_root / name}
        for page, mnt in self.huge.mounts.items():
            s[placeholder_for_dir(page)] = mnt / name
        for d in s.values():
            d.mkdir(parents=True)
        return {k: str(v) for k, v in s.items()}

    @staticmethod
    def clean(subst):
        for d in subst.values():
            shutil.rmtree(d, ignore_errors=True)


def apply(text, subst):
    for ph, real in subst.items():
        text = text.replace(ph, real)
    return text


def apply_json(d, subst):
    return {k: (apply(v, subst) if isinstance(v, str) else v) for k, v in d.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="directory with libvirt's *.args files")
    ap.add_argument("--hostmem", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--phases", default="cli,qmp")
    ap.add_argument("--json", help="write every result to this file")
    ap.add_argument("--only", help="run only the sets found in .args files matching this "
                    "regular expression")
    ap.add_argument("--source", default="", help="where the data came from (printed)")
    opt = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    host = Host()
    qemu = shutil.which(opt.qemu) or die(f"{opt.qemu} not found")
    files, objects, sets = collect(opt.data)
    if opt.only:
        sets = {k: v for k, v in sets.items() if any(re.search(opt.only, f) for f in v)}
        objects = set(t for k in sets for t in k)
    n_backends = sum(1 for t in objects if parse_object(t).qom_type != "thread-context")
    n_ctx = len(objects) - n_backends
    with_ctx = sum(1 for k in sets if len(k) > 1)
    templates = {k: rewrite(k, host) for k in sets}
    distinct_run = {}
    for k, t in templates.items():
        distinct_run.setdefault(json.dumps(t.objs), []).append(k)

    print(f"libvirt data: {opt.source or opt.data}")
    print(f"  {len(files)} .args files; {len(objects)} distinct memory objects "
          f"({n_backends} memory-backend-*, {n_ctx} thread-context); {len(sets)} object "
          f"sets ({with_ctx} backends with the thread-context their prealloc-context "
          f"names); {len(distinct_run)} distinct sets after rewriting")
    print(f"  host: CPUs {host.cpus}, nodes with memory {host.nodes}, huge page sizes "
          f"{[human(p) for p in sorted(host.hugepage_sizes)]}")

    needs = {}
    for t in templates.values():
        if not t.needs:
            for page, pages in t.hugepages.items():
                needs[page] = max(needs.get(page, 0), pages)
    root = Path(tempfile.mkdtemp(prefix="hostmem-libvirt-", dir="/tmp"))
    shm_root = Path(tempfile.mkdtemp(prefix="hostmem-libvirt-", dir="/dev/shm")) \
        if os.path.isdir("/dev/shm") else root / "shm"
    huge = HugePages(root, host)
    runner = Runner(qemu, opt.hostmem, root)
    phases = [p for p in opt.phases.split(",") if p]
    results = {ph: {} for ph in phases}  # phase -> run key -> dict
    t0 = time.monotonic()
    servers = {}

    def run_pair(ph, t):
        """Both programs on one set, QEMU first; {prog: Outcome}."""
        outs = {}
        huge.regrown = False
        for prog in ("qemu", "hostmem"):
            huge.ensure(t.hugepages)
            s = ws.subst(f"{ph}-{prog}")
            objs = [(f, apply(x, s)) for f, x in t.objs]
            extra = None
            if prog == "hostmem" and outs["qemu"].rb:
                extra = {oid: [n for n, ty in lst.items() if not ty.startswith("child<")]
                         for oid, lst in outs["qemu"].rb["list"].items()
                         if "error" not in lst}
            try:
                if ph == "cli":
                    o = (runner.qemu_cli(objs, t.ids, t.backend_ids) if prog == "qemu"
                         else runner.hostmem_cli(objs, t.ids, t.backend_ids, extra))
                else:
                    mark = servers[prog].stderr_mark()
                    o, problem = servers[prog].run_set(
                        [apply_json(a, s) for a in t.qmp_args], t.ids,
                        t.backend_ids, extra)
                    if problem:
                        o.cleanup = problem
                        servers[prog].restart()
            except QmpError as e:
                o = Outcome(False, f"(no answer) {e}")
                if ph == "qmp":
                    err = servers[prog].stderr_since(mark).strip()
                    if err:
                        o.message += f"; stderr: {err[-300:]}"
                    servers[prog].restart(kill=True)
            if o.rb:
                o.rb = normalize(o.rb, s)
            o.message = normalize(o.message, s)
            o.warnings = [normalize(w, s) for w in o.warnings]
            outs[prog] = o
            Workspace.clean(s)
        return outs

    try:
        huge.prepare(needs)
        if needs:
            print("  huge pages: " + ", ".join(
                f"{human(p)}: hugetlbfs mount, {n} pages for the largest set"
                + (f" (NOT AVAILABLE: {huge.missing[p]})" if p in huge.missing else "")
                for p, n in sorted(needs.items())))
        ws = Workspace(root, shm_root, huge)
        if "qmp" in phases:
            servers = {"qemu": Server("qemu", runner), "hostmem": Server("hostmem", runner)}
        for rk, keys in distinct_run.items():
            t = templates[keys[0]]
            types = dict(zip(t.ids, (parse_object(x).qom_type for x in keys[0])))
            skip = t.needs or "; ".join(huge.missing[p] for p in t.hugepages if p in huge.missing)
            for ph in phases:
                if skip:
                    results[ph][rk] = {"status": "not run", "why": skip}
                    continue
                if ph == "qmp" and t.qmp_args is None:
                    results[ph][rk] = {"status": "not run", "why": "keyval object: no QMP form"}
                    continue
                outs = run_pair(ph, t)
                for _ in range(2):
                    if not t.hugepages or (outs["qemu"].accepted and outs["hostmem"].accepted) \
                            or not huge.disturbed():
                        break
                    # another process changed a huge page pool under us: once more
                    outs = run_pair(ph, t)
                if t.hugepages and huge.disturbed() and not (
                        outs["qemu"].accepted and outs["hostmem"].accepted):
                    results[ph][rk] = {"status": "not run", "why": "a huge page pool was "
                                       "changed by another process during the run"}
                    continue
                q, h = outs["qemu"], outs["hostmem"]
                res = {"qemu": q.message if not q.accepted else "accepted",
                       "hostmem": h.message if not h.accepted else "accepted",
                       "objects": [x for _, x in t.objs], "rewrites": t.changes}
                for prog, o in outs.items():
                    if o.cleanup:
                        res.setdefault("cleanup", []).append(f"{prog}: {o.cleanup}")
                if q.accepted and h.accepted:
                    res["status"] = "both"
                    given = {o.id: set(k for k, _ in (o.props.items() if o.form == "json"
                                                      else o.props))
                             for o in map(parse_object, keys[0])}
                    res["diffs"], res["intended"], res["compared"] = compare(
                        q.rb, h.rb, types, given)
                    res["qemu-readback"] = {
                        "query-memdev": q.rb["memdev"],
                        "qom-get": {f"{oid}.{name}": v for (oid, name), v in q.rb["props"].items()}}
                    missing_warn = [w for w in q.warnings
                                    if not any(w.split(": ", 1)[-1] in hw for hw in h.warnings)]
                    if missing_warn:
                        res["warnings-not-in-hostmem"] = missing_warn
                elif not q.accepted and not h.accepted:
                    res["status"] = "neither"
                elif q.accepted:
                    res["status"] = "qemu-only"
                else:
                    res["status"] = "hostmem-only"
                results[ph][rk] = res
    finally:
        for s in servers.values():
            s.stop()
        huge.release()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(shm_root, ignore_errors=True)
    elapsed = time.monotonic() - t0

    failed = not_run = False
    example = {rk: (keys[0], sets[keys[0]][0]) for rk, keys in distinct_run.items()}
    weight = {rk: len(keys) for rk, keys in distinct_run.items()}
    for ph in phases:
        res = results[ph]
        count = {}
        for rk, r in res.items():
            count[r["status"]] = count.get(r["status"], 0) + weight[rk]
        mism = sum(weight[rk] for rk, r in res.items() if r.get("diffs"))
        cleanup = sum(weight[rk] for rk, r in res.items() if r.get("cleanup"))
        total = sum(weight.values())
        n_cmp = {}
        for r in res.values():
            for k, v in r.get("compared", {}).items():
                n_cmp[k] = n_cmp.get(k, 0) + v
        label = {"cli": "-object on the command line",
                 "qmp": "object-add over QMP"}[ph]
        print(f"\n== {ph}: {label}")
        print(f"object sets total {total}: accepted by both {count.get('both', 0)}, "
              f"refused by both {count.get('neither', 0)}, QEMU-only "
              f"{count.get('qemu-only', 0)}, hostmem-only {count.get('hostmem-only', 0)}, "
              f"value mismatches {mism}, not run {count.get('not run', 0)}"
              + (f", object-del problems {cleanup}" if cleanup else ""))
        if n_cmp:
            print("read back from both (distinct sets run): " + ", ".join(
                f"{v} {k} values" for k, v in n_cmp.items()) + " compared")
        else:
            print("read back: nothing compared (no set accepted by both)")
        groups = {}

        def add(cause, rk, detail):
            g = groups.setdefault(cause, {"sets": 0, "ex": None})
            g["sets"] += weight[rk]
            if g["ex"] is None:
                g["ex"] = (rk, detail)

        for rk, r in res.items():
            if r["status"] == "qemu-only":
                add("QEMU accepts, hostmem refuses: " + message_cause(r["hostmem"]), rk,
                    f"hostmem: {r['hostmem']}")
            elif r["status"] == "hostmem-only":
                add("hostmem accepts, QEMU refuses: " + message_cause(r["qemu"]), rk,
                    f"QEMU: {r['qemu']}")
            elif r["status"] == "not run":
                add("not run: " + r["why"], rk, r["why"])
            for cause, detail in {c: d for c, d in reversed(r.get("diffs", []))}.items():
                add("value differs: " + cause, rk, detail)
            for c in r.get("cleanup", []):
                add("object-del: " + message_cause(c), rk, c)
        if groups:
            print("failures and gaps by cause (object sets; one example each):")
            for cause, g in sorted(groups.items(), key=lambda kv: (-kv[1]["sets"], kv[0])):
                rk, detail = g["ex"]
                key, fname = example[rk]
                print(f"  [{g['sets']:3}] {cause}")
                print(f"        e.g. {fname}: {' '.join(key)}")
                print(f"        {detail}")
        info = {}
        for rk, r in res.items():
            if r["status"] == "neither" and r["qemu"] != r["hostmem"]:
                info.setdefault(("refused by both, messages differ", message_cause(r["qemu"]),
                                 message_cause(r["hostmem"])), []).append(rk)
            for reason, _ in r.get("intended", [])[:1]:
                info.setdefault((f"intended: {reason}",), []).append(rk)
            if r.get("warnings-not-in-hostmem"):
                info.setdefault(("QEMU warned, hostmem did not",), []).append(rk)
        for what, rks in info.items():
            rk = rks[0]
            r = res[rk]
            print(f"  (info) {what[0]}: {sum(weight[x] for x in rks)} sets, e.g. "
                  f"{example[rk][1]}: {' '.join(example[rk][0])}")
            if what[0].startswith("refused"):
                print(f"        QEMU: {r['qemu']}\n        hostmem: {r['hostmem']}")
            elif what[0].startswith("intended"):
                print(f"        {r['intended'][0][1]}")
            else:
                print(f"        QEMU: {r['warnings-not-in-hostmem'][0]}")
        if count.get("qemu-only") or count.get("hostmem-only") or mism or cleanup:
            failed = True
        if count.get("not run"):
            # Nothing is skipped (README.md): a set this host could not run fails.
            not_run = True
    print(f"\n({elapsed:.1f} s)")
    if opt.json:
        dump = {ph: [{"files": sets[distinct_run[rk][0]], "libvirt": list(distinct_run[rk][0]),
                      "rewritten": [x for _, x in templates[distinct_run[rk][0]].objs], **r}
                     for rk, r in results[ph].items()] for ph in phases}
        Path(opt.json).write_text(json.dumps(dump, indent=1, default=str))
    if failed or not_run:
        why = [w for w, bad in (
            ("hostmem and QEMU 10 disagree on the objects above", failed),
            ("object sets could not run here (the 'not run' causes above)", not_run)) if bad]
        print(f"libvirt-objects: FAILED ({'; '.join(why)})")
        return 1
    print("libvirt-objects: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
