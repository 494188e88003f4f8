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
QEMU refuses, a read-back value differs, or a set could not run here (nothing is
skipped); the list says which and why.
Python standard library only. The parts: libvirt_data.py (the .args files, rewriting),
libvirt_programs.py (running QEMU and hostmem), libvirt_huge.py (huge pages, mem-path
directories), libvirt_compare.py (comparing, reporting).
"""

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from libvirt_compare import compare, normalize, report_phase
from libvirt_data import Host, collect, die, human, parse_object, rewrite
from libvirt_huge import HugePages, Workspace, apply, apply_json
from libvirt_programs import Outcome, QmpError, Runner, Server


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
            gigantic = "; ".join(huge.unassembled[p] for p in t.hugepages
                                 if p in huge.unassembled)
            for ph in phases:
                if gigantic and not skip:
                    results[ph][rk] = {"status": "skipped", "why": gigantic}
                    continue
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
        bad, unrun = report_phase(ph, results[ph], weight, example)
        failed, not_run = failed or bad, not_run or unrun
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
