"""The two programs' read-backs compared value by value, and each phase's results
reported: counts, failures and gaps grouped by cause, intended differences as (info).
Part of libvirt_objects.py.
"""

import json
import os
import re


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


def report_phase(ph, res, weight, example):
    """Print one phase's counts, its failures and gaps grouped by cause (one
    example each) and the (info) lines; (failed, not run): whether hostmem and
    QEMU disagreed, whether a set could not run."""
    failed = not_run = False
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
    skipped = [rk for rk, r in res.items() if r["status"] == "skipped"]
    if skipped:
        # Excluded by name (README: gigantic pages), never counted as passed.
        print(f"skipped by name: {sum(weight[rk] for rk in skipped)} object sets: "
              + res[skipped[0]]["why"])
        for rk in skipped:
            key, fname = example[rk]
            print(f"  skipped: {fname}: {' '.join(key)}")
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
    return failed, not_run
