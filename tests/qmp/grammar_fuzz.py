"""The `-object` grammar differential fuzzer: each generated case (grammar_gen.py) is
given to QEMU 10 and to hostmem, both are asked back for every property of every
object over QMP, and the two answers are compared: acceptance (made, refused, help
printed, crashed), the objects made, each property's value, the properties help
lists. A disagreement is either one docs/qmp.md lists (RULES, each naming the text of
its row there) or a failure, shrunk to a minimal case.

The QMP variant gives the same JSON members to `object-add` on one running QEMU and
one running hostmem (QEMU's QAPI input visitor instead of its command-line parser).

On demand: python3 tests/qmp/grammar_fuzz.py [--cases N] [--qmp-cases N] [--seed S]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import grammar_gen as gen  # noqa: E402
import hostmem_testkit as kit  # noqa: E402

# Seconds one QMP reply may take (a case's objects are small).
QMP_TIMEOUT = 30

REPO = Path(__file__).resolve().parents[2]
QEMU_ARGS = ["-machine", "none", "-nodefaults", "-display", "none", "-accel", "tcg", "-S"]


@dataclass
class Answer:
    """What one program made of one case."""
    status: str                       # made | refused | help | crashed
    objects: dict = field(default_factory=dict)   # id -> {prop: value or "<error>"}
    text: str = ""                    # stderr (the error, warnings), or the help text


def read_back(mon):
    """Every object under /objects with every property of its type (qom-get)."""
    objects = {}
    for entry in mon.execute("qom-list", path="/objects").get("return", []):
        m = re.fullmatch(r"child<(.+)>", entry["type"])
        if not m:
            continue
        props = {}
        for p in gen.props_of(m.group(1)):
            r = mon.execute("qom-get", path=f"/objects/{entry['name']}", property=p)
            props[p] = r["return"] if "return" in r else "<error>"
        objects[entry["name"]] = {"qom-type": m.group(1), **props}
    return objects


def finish(proc, timeout=20):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode(errors="replace"), err.decode(errors="replace")


def ended(proc, out, err):
    """The answer of a program that exited instead of serving QMP."""
    if proc.returncode == 0:
        return Answer("help", text=out)
    if proc.returncode < 0 or proc.returncode == 134:
        return Answer("crashed", text=err.strip())
    if proc.returncode == 101 and "panicked" in err:
        return Answer("panicked", text=err.strip())
    return Answer("refused", text=err.strip())


def object_args(specs):
    return [a for spec in specs for a in ("-object", spec)]


def run_qemu(qemu, specs):
    proc = subprocess.Popen([qemu, *QEMU_ARGS, *object_args(specs), "-qmp", "stdio"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    if not first.startswith(b'{"QMP"'):
        # Read through the buffered file: communicate() would skip what it holds.
        proc.stdin.close()
        out, err = first + proc.stdout.read(), proc.stderr.read()
        proc.wait()
        return ended(proc, out.decode(errors="replace"), err.decode(errors="replace"))
    mon = kit.QmpStream.stdio(proc, timeout=QMP_TIMEOUT, greeting=first)
    objects = read_back(mon)
    mon.execute("quit")
    return Answer("made", objects, finish(proc)[1])


def run_hostmem(hostmem, specs, sockdir):
    sock = os.path.join(sockdir, f"h{os.getpid()}.{time.monotonic_ns()}")
    proc = subprocess.Popen([hostmem, "run", "--qmp", sock, *object_args(specs)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if not kit.wait_for_socket(proc, sock, 20):
        out, err = finish(proc)
        return ended(proc, out, err)
    mon = kit.QmpStream.unix(sock, timeout=QMP_TIMEOUT, proc=proc)
    objects = read_back(mon)
    try:
        mon.execute("quit")
    except (kit.QmpError, OSError):
        pass
    mon.close()
    return Answer("made", objects, finish(proc)[1])


def help_names(text):
    """`name=<type>` of each help line (descriptions are hostmem's own words)."""
    return sorted(m.group(1) for m in re.finditer(r"^  (\S+=<[^>]+>)", text, re.M))


def differences(q, h):
    """What differs between QEMU's answer and hostmem's, as (what, detail) pairs."""
    if q.status != h.status:
        return [("status", f"QEMU {q.status}, hostmem {h.status}: {q.text or h.text}")]
    if q.status == "help":
        if q.text.startswith("List of user creatable objects"):
            return [] if h.text.startswith("List of user creatable objects") else [
                ("help", "type list")]
        return [] if help_names(q.text) == help_names(h.text) else [("help", "properties")]
    if q.status != "made":
        return []
    if sorted(q.objects) != sorted(h.objects):
        return [("objects", f"QEMU {sorted(q.objects)}, hostmem {sorted(h.objects)}")]
    out = []
    for oid, props in q.objects.items():
        for p, v in props.items():
            if h.objects[oid].get(p) != v:
                out.append((f"value:{p}",
                            f"{oid}: QEMU {v!r}, hostmem {h.objects[oid].get(p)!r}"))
    return out


def mentions(case, name):
    """Whether the case sets a property (in any spelling)."""
    return any(re.search(rf"(^|[\s'\"]){re.escape(name)}['\"=\s:]|^(no)?{re.escape(name)}$",
                         p.strip()) for p in case.parts)


def before_ids(case):
    """The ids of the objects given ahead of the case's own."""
    return {m.group(1) for s in case.before
            for m in [re.search(r"""(?:id=|"id":")([\w.-]+)""", s)] if m}


# Documented differences: (doc text that must be in docs/qmp.md, predicate).
RULES = [
    ("`prealloc-threads` not given (qom-get)",
     lambda case, what, detail, q, h: what == "value:prealloc-threads"
     and (not mentions(case, "prealloc-threads")
          or detail.split(":")[0] in before_ids(case))),
    ("`size=18446744073709551615`",
     lambda case, what, detail, q, h: what == "status" and q.status == "crashed"
     and "size != 0" in q.text and h.status == "refused"),
    ("`object-add` memfd `hugetlbsize` without `hugetlb: true`",
     lambda case, what, detail, q, h: what == "status" and q.status == "made"
     and "needs hugetlb=on" in h.text),
    ("`host-nodes` naming an absent node beside a present one",
     lambda case, what, detail, q, h: what == "status" and q.status == "made"
     and "does not exist on this host" in h.text),
    ("`object-add` with `policy: preferred-many`, `weighted-interleave`, `local`",
     lambda case, what, detail, q, h: what == "status" and h.status == "made"
     and "'local'" in q.text),
]


def documented(case, diffs, q, h):
    """The docs/qmp.md rows that cover every difference, or None if one is not."""
    rows = set()
    for what, detail in diffs:
        row = next((doc for doc, hit in RULES if hit(case, what, detail, q, h)), None)
        if row is None:
            return None
        rows.add(row)
    return rows


@dataclass
class Verdict:
    case: gen.Case
    q: Answer
    h: Answer
    diffs: list
    rows: set

    @property
    def bad(self):
        return bool(self.diffs) and self.rows is None


class Fuzzer:
    def __init__(self, qemu, hostmem, tmp):
        self.qemu, self.hostmem, self.tmp = qemu, hostmem, tmp

    def judge(self, case):
        q = run_qemu(self.qemu, case.specs())
        h = run_hostmem(self.hostmem, case.specs(), self.tmp)
        diffs = differences(q, h)
        return Verdict(case, q, h, diffs, documented(case, diffs, q, h) if diffs else set())

    def shrink(self, v):
        """Drops parts while the case still disagrees in the same way."""
        key = [w for w, _ in v.diffs]
        changed = True
        while changed:
            changed = False
            for i in range(len(v.case.parts)):
                w = self.judge(v.case.without(i))
                if w.bad and [x for x, _ in w.diffs] == key:
                    v, changed = w, True
                    break
        return v

    def run(self, cases, workers=2):
        with ThreadPoolExecutor(workers) as pool:
            verdicts = list(pool.map(self.judge, cases))
        return verdicts


def words(answer, spec):
    """The refusal itself: the last line of stderr without warnings, hints and the
    `PROGRAM: -object SPEC: ` prefix."""
    lines = [ln for ln in answer.text.splitlines() if "warning:" not in ln
             and not ln.startswith(("Please use", "Identifiers consist"))]
    last = lines[-1] if lines else ""
    for prog in ("qemu-system-x86_64: ", "hostmem: "):
        for pre in (f"{prog}-object {spec}: ", prog):
            if last.startswith(pre):
                return last[len(pre):]
    return last


def counts(verdicts):
    c = {"cases": len(verdicts), "both accept": 0, "both refuse": 0, "both help": 0,
         "documented differences": 0, "undocumented": 0}
    rows = {}
    for v in verdicts:
        if v.bad:
            c["undocumented"] += 1
        elif v.diffs:
            c["documented differences"] += 1
            for r in v.rows:
                rows[r] = rows.get(r, 0) + 1
        elif v.q.status == "made":
            c["both accept"] += 1
        elif v.q.status == "help":
            c["both help"] += 1
        else:
            c["both refuse"] += 1
            spec = v.case.text()
            if "\n" not in spec and words(v.q, spec) == words(v.h, spec):
                c["both refuse, in QEMU's words"] = c.get("both refuse, in QEMU's words", 0) + 1
    c["by row"] = rows
    return c


def report(v):
    return (" ".join(f"-object {s!r}" for s in v.case.specs()) + ": " + "; ".join(f"{w}: {d}" for w, d in v.diffs)
            + f"\n    QEMU: {v.q.status} {v.q.text[:200]!r}\n    hostmem: {v.h.status} "
            f"{v.h.text[:200]!r}")


def workdir():
    """A short directory (Unix socket paths) with the `a,b` and `a=b` directories the
    escape cases name."""
    d = tempfile.mkdtemp(prefix="hmg", dir="/tmp")
    os.mkdir(os.path.join(d, "a,b"))
    os.mkdir(os.path.join(d, "a=b"))
    return d


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--qmp-cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    qemu = shutil.which("qemu-system-x86_64")
    hostmem = os.environ.get("HOSTMEM_BIN", str(REPO / "target/release/hostmem"))
    tmp = workdir()
    try:
        import grammar_qmp
        f = Fuzzer(qemu, hostmem, tmp)
        verdicts = f.run(gen.generate(a.seed, a.cases, tmp), a.workers)
        qv = grammar_qmp.run(qemu, hostmem, gen.gen_qmp(a.seed, a.qmp_cases, tmp), tmp)
        print(f"seed {a.seed}: -object {counts(verdicts)}; object-add {counts(qv)}")
        bad = [v for v in verdicts if v.bad]
        for v in bad[:20]:
            print("UNDOCUMENTED", report(f.shrink(v)))
        for v in [v for v in qv if v.bad][:20]:
            print("UNDOCUMENTED object-add", report(v))
        return 1 if bad or any(v.bad for v in qv) else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
