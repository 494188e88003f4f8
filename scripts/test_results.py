#!/usr/bin/env python3
"""Adds up the suites scripts/test ran, each from its own output, and holds each suite to
the inventory of what it must run (scripts/expected_tests.txt).

    scripts/test_results.py [--inventory FILE] DIR
    scripts/test_results.py [--inventory FILE] --write-inventory DIR

DIR holds, for each suite in the order it ran, NN-KIND.name (its name), NN-KIND.log (its
output) and NN-KIND.status (its exit status). KIND says how the log is read, and what
the entries of the suite's inventory section are:

  lint        lines `lint: WHAT exit N` (cargo fmt --check, cargo clippy, the
              rust-version build): one check each; `lint: WHAT skipped: WHY` is a
              skipped check (the rust-version toolchain cannot be fetched). Entries: the
              checks (a skipped one is there, and counted skipped).
  cargo-test  per test binary: cargo's header (`Running tests/backend.rs (...deps/
              backend-HASH)`, `Running unittests src/lib.rs (...deps/hostmem-HASH)`,
              `Doc-tests hostmem`), the first `running N tests` after it and the last
              `test result:` line before the next header. Only that line counts, and only
              when its passed + failed + ignored + measured is N: a failed test that ran
              its binary again in a child has the child's result line in its panic
              message, before its binary's own. A binary that printed `running N tests`
              and no result line of its own ended early (exit() in a test, a signal):
              its `test NAME ... ok` lines count, the rest never reported. Entries:
              `tests/backend.rs (backend)`, `unittests src/lib.rs (hostmem)`, `Doc-tests
              hostmem`: the binary's tests that ran (passed or failed; not ignored ones).
  pytest      the summary line (`N passed, N failed, N skipped, N errors in S s`) and,
              from `pytest -rap`, the short test summary's PASSED/FAILED/ERROR/XFAIL/XPASS
              lines. Entries: the test files, each with its tests that ran (without the
              short summary only the total, held to the section's sum; the suite fails).
  libvirt     tests/libvirt's `object sets total ...` line of each phase (`== cli: ...`,
              `== qmp: ...`) and its last line `libvirt-objects: passed|FAILED`; a set is
              failed when QEMU and hostmem disagree on it (QEMU-only, hostmem-only, value
              mismatch, object-del problem), skipped when not run, passed otherwise.
              Entries: the phases, each with its object sets that ran.
  numa        the guest's per-check lines (`ok   NAME (...)`, `FAIL NAME: ...`) and
              `numa-suite: N passed, M failed`, which must agree. Entries: the checks.
  fuzz        fuzz/run.sh's `fuzz: targets: ...` and per target `fuzz: T: R runs, C
              crashes, exit S`; a target is one result, passed when it ran to its end.
              Entries: the targets.

The inventory (scripts/expected_tests.txt; its header says how to update it) has a
section `[NAME]` per suite, NAME as in NN-KIND.name, with lines `ENTRY  AT-LEAST`. An
entry that ran fewer than AT-LEAST (or not at all) is named, and each result missing
counts as failed; an entry the inventory does not know yet is only noted. A suite that
ran nothing, a suite without a section, and a section whose suite did not run are
failures. `--write-inventory DIR` sets the sections of the suites in DIR to what they
ran there (each only when it passed but for the inventory; exit 1 if one did not),
keeps the others and the file's header, and prints every change.

Prints one line per suite (with what failed below it), then the closing line

    suites: X passed, Y failed, Z skipped/ignored; fuzz: R runs, C crashes

where X, Y and Z add up the results (tests, checks, object sets, fuzz targets) of all
suites, Y with the results missing against the inventory. A suite fails when it exits
non-zero, counts a failure, a crash or a missing result, or its output has no count to
read; a failed suite that counted no failure of its own adds 1 to Y, so Y is 0 only
when every suite passed. Exits 1 when any suite failed, 0 otherwise. Python 3 standard
library only.
"""

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

INVENTORY = Path(__file__).resolve().with_name("expected_tests.txt")


@dataclass
class Result:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    runs: int = 0
    crashes: int = 0
    detail: str = ""  # the suite's own counts, in its own words
    problems: list = field(default_factory=list)  # why it failed beyond its counts
    notes: list = field(default_factory=list)  # worth saying, not a failure
    ran: dict = field(default_factory=dict)  # inventory entry -> results it reported
    ran_total: int = None  # when entries cannot be told apart: the results of all
    missing: int = 0  # results the inventory expects that never came


class Unreadable(Exception):
    """The output has no count to read."""


def lint(log):
    r = Result()
    checks = re.findall(r"^lint: (.+) exit (\d+)$", log, re.M)
    skipped = re.findall(r"^lint: (.+) skipped: (.+)$", log, re.M)
    if not checks and not skipped:
        raise Unreadable("no `lint: ... exit N` line")
    r.skipped = len(skipped)
    for what, status in checks:
        r.ran[what] = r.ran.get(what, 0) + 1
        if status == "0":
            r.passed += 1
        else:
            r.failed += 1
            r.problems.append(f"{what} exit {status}")
    for what, _why in skipped:
        r.ran[what] = r.ran.get(what, 0) + 1
    r.detail = f"{r.passed} passed, {r.failed} failed (" + ", ".join(w for w, _ in checks) + ")"
    if skipped:
        r.detail += "; skipped: " + "; ".join(f"{w} ({why})" for w, why in skipped)
    return r


# `     Running unittests src/lib.rs (target/debug/deps/hostmem-0123456789abcdef)`,
# `     Running tests/vmm/main.rs (target/debug/deps/vmm-...)`, `   Doc-tests hostmem`.
CARGO_HEADER = re.compile(
    r"^\s*(?:Running (.+?) \((?:.*[/\\])?(.+?)-[0-9a-f]{16}(?:\.exe)?\)|Doc-tests (\S+))\s*$", re.M
)
CARGO_RUNNING = re.compile(r"^running (\d+) tests?$", re.M)
CARGO_RESULT = re.compile(
    r"^test result: (?:ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured;", re.M
)
CARGO_TEST_LINE = re.compile(r"^test .+ \.\.\. (ok|FAILED|ignored)\b", re.M)


def cargo_binary(r, key, section):
    """Counts one test binary's section of the log (after its header) into r."""
    started = CARGO_RUNNING.search(section)
    if not started:
        r.problems.append(f"{key}: no `running N tests` line (the binary did not start?)")
        return
    expect = int(started[1])
    results = CARGO_RESULT.findall(section)
    if results and sum(map(int, results[-1])) == expect:
        passed, failed, ignored, measured = map(int, results[-1])
        r.passed += passed + measured
        r.failed += failed
        r.skipped += ignored
        r.ran[key] = passed + failed + measured
        return
    outcomes = CARGO_TEST_LINE.findall(section, started.end())
    ok, bad = outcomes.count("ok"), outcomes.count("FAILED")
    r.passed += ok
    r.failed += bad
    r.skipped += outcomes.count("ignored")
    r.ran[key] = ok + bad
    why = (f"{key}: `running {expect} tests` and no `test result:` line of its own: "
           f"{max(0, expect - len(outcomes))} of them never reported (the binary ended early: "
           "exit() in a test, or a signal)")
    if results:
        why += f"; {len(results)} `test result:` line(s) in its output not counted (a child's)"
    r.problems.append(why)


def cargo_test(log):
    r = Result()
    heads = list(CARGO_HEADER.finditer(log))
    if not heads:
        raise Unreadable("no `Running ...` or `Doc-tests ...` header, so no test binary can be "
                         "told from another (`cargo test -q` hides them)")
    before = log[:heads[0].start()]
    if CARGO_RUNNING.search(before) or CARGO_RESULT.search(before):
        r.problems.append("test output before the first `Running` header: not counted")
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(log)
        key = base = f"{h[1]} ({h[2]})" if h[1] else f"Doc-tests {h[3]}"
        n = 1
        while key in r.ran:  # the same binary twice, or two packages' tests/X.rs
            n += 1
            key = f"{base} #{n}"
        r.ran[key] = 0
        cargo_binary(r, key, log[h.end():end])
    r.detail = (f"{r.passed} passed, {r.failed} failed, {r.skipped} ignored "
                f"({len(heads)} test binaries and doc-test runs)")
    return r


PYTEST_SUMMARY = re.compile(
    r"^=*\s*((?:\d+ [a-z]+)(?:, \d+ [a-z]+)*) in [0-9.]+s\b", re.M
)
PYTEST_SHORT = re.compile(r"^=+ short test summary info =+$", re.M)
PYTEST_OUTCOME = re.compile(r"^(?:PASSED|FAILED|ERROR|XFAIL|XPASS) (.+?)::(.+?)(?: - .*)?$", re.M)
PYTEST_SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (.+?):\d+: ", re.M)


def pytest(log):
    found = list(PYTEST_SUMMARY.finditer(log))
    if not found:
        if re.search(r"^=*\s*no tests ran in ", log, re.M):
            r = Result(detail="no tests ran")
            r.problems.append("no test ran")
            return r
        raise Unreadable("no pytest summary line (`N passed ... in S s`)")
    summary = found[-1]
    counts = {}
    for n, word in re.findall(r"(\d+) ([a-z]+)", summary[1]):
        counts[word] = counts.get(word, 0) + int(n)
    errors = counts.get("error", 0) + counts.get("errors", 0)
    r = Result(
        passed=counts.get("passed", 0) + counts.get("xpassed", 0),
        failed=counts.get("failed", 0) + errors,
        skipped=counts.get("skipped", 0) + counts.get("xfailed", 0),
    )
    r.detail = (f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
                f"{counts.get('skipped', 0)} skipped, {errors} errors")
    extra = [f"{n} {w}" for w, n in counts.items()
             if w not in ("passed", "failed", "skipped", "error", "errors", "warning", "warnings")]
    if extra:
        r.detail += " (" + ", ".join(extra) + ")"
    # Per file, from the short test summary just before the summary line (what tests
    # printed comes before it): every test that ran, once, whatever its outcome.
    shorts = [m for m in PYTEST_SHORT.finditer(log, 0, summary.start())]
    if not shorts:
        r.problems.append("no short test summary (run pytest with -rap): the tests of each "
                          "file cannot be counted, only their total")
        r.ran_total = r.passed + r.failed + counts.get("xfailed", 0)
        return r
    section = log[shorts[-1].end():summary.start()]
    tests = {}
    for path, test in PYTEST_OUTCOME.findall(section):
        tests.setdefault(path, set()).add(test)
    r.ran = {path: len(names) for path, names in tests.items()}
    skips = {}
    for n, path in PYTEST_SKIPPED.findall(section):
        skips[path] = skips.get(path, 0) + int(n)
    if skips:
        r.notes.append("skipped: " + ", ".join(f"{p} {n}" for p, n in skips.items()))
    return r


LIBVIRT_SKIPPED = re.compile(r"^skipped by name: (\d+) object sets: ", re.M)
LIBVIRT_PHASE = re.compile(
    r"^object sets total (\d+): accepted by both (\d+), refused by both (\d+), "
    r"QEMU-only (\d+), hostmem-only (\d+), value mismatches (\d+), not run (\d+)"
    r"(?:, object-del problems (\d+))?", re.M
)


def libvirt(log):
    phases = list(LIBVIRT_PHASE.finditer(log))
    verdict = re.findall(r"^libvirt-objects: (passed|FAILED)", log, re.M)
    if not phases:
        raise Unreadable("no `object sets total ...` line")
    if not verdict:
        raise Unreadable("no final `libvirt-objects: passed|FAILED` line")
    r = Result()
    for i, m in enumerate(phases):
        total, _both, _neither, qemu_only, hostmem_only, mism, not_run, cleanup = m.groups()
        heads = re.findall(r"^== (\S+): ", log[:m.start()], re.M)
        # Sets excluded by name (tests/libvirt/README.md: 1 GiB pages the kernel could
        # not assemble) are skipped, not passed; the phase's line comes right after.
        rest = log[m.end():phases[i + 1].start() if i + 1 < len(phases) else len(log)]
        by_name = LIBVIRT_SKIPPED.search(rest)
        skipped = int(by_name.group(1)) if by_name else 0
        failed = int(qemu_only) + int(hostmem_only) + int(mism) + int(cleanup or 0)
        r.failed += failed
        r.skipped += int(not_run) + skipped
        r.passed += max(0, int(total) - int(not_run) - skipped - failed)
        r.ran[heads[-1] if heads else f"phase {i + 1}"] = int(total) - int(not_run) - skipped
    if verdict[-1] == "FAILED" and r.failed == 0:
        r.problems.append("libvirt-objects: FAILED")
    r.detail = (f"{r.passed} passed, {r.failed} failed, {r.skipped} not run "
                f"(object sets, {len(phases)} phases)")
    return r


NUMA_CHECK = re.compile(r"^(?:ok {3}|FAIL )([\w.-]+)[ :]", re.M)


def numa(log):
    found = re.findall(r"numa-suite: (\d+) passed, (\d+) failed", log)
    if not found:
        raise Unreadable("no `numa-suite: N passed, M failed` line (the suite ended early?)")
    passed, failed = map(int, found[-1])
    r = Result(passed=passed, failed=failed)
    checks = NUMA_CHECK.findall(log)
    for name in checks:
        r.ran[name] = r.ran.get(name, 0) + 1
    if len(checks) != passed + failed:
        r.problems.append(f"the guest printed {len(checks)} `ok`/`FAIL` check lines but "
                          f"`numa-suite: {passed} passed, {failed} failed`")
    r.detail = f"{r.passed} passed, {r.failed} failed"
    return r


def fuzz(log):
    listed = re.findall(r"^fuzz: targets:(.*)$", log, re.M)
    if not listed:
        raise Unreadable("no `fuzz: targets:` line (did the fuzz build fail?)")
    targets = listed[-1].split()
    if not targets:
        raise Unreadable("no fuzz targets listed")
    ran = {t: (runs, int(crashes), int(status)) for t, runs, crashes, status in re.findall(
        r"^fuzz: (\S+): (\d+|\?) runs, (\d+) crashes, exit (\d+)", log, re.M)}
    r = Result()
    parts = []
    for t in targets:
        if t not in ran:  # counted failed as missing against the inventory, not here too
            r.problems.append(f"{t}: no result")
            parts.append(f"{t} not run")
            continue
        runs, crashes, status = ran[t]
        r.crashes += crashes
        r.ran[t] = 1
        if runs.isdigit():
            r.runs += int(runs)
        if crashes or status or not runs.isdigit():
            r.failed += 1
            if not crashes:
                r.problems.append(f"{t}: exit {status}, {runs} runs")
        else:
            r.passed += 1
        parts.append(f"{t} {runs} runs" + (f" {crashes} crashes" if crashes else ""))
    r.detail = (f"{r.passed} passed, {r.failed} failed (targets); "
                f"{r.runs} runs, {r.crashes} crashes: " + ", ".join(parts))
    return r


READERS = {"lint": lint, "cargo-test": cargo_test, "pytest": pytest, "libvirt": libvirt,
           "numa": numa, "fuzz": fuzz}


class BadInventory(Exception):
    """The inventory file cannot be read."""


def load_inventory(path):
    """{suite: {entry: at least}} and the file's header (its leading comment lines)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInventory(f"cannot read {path}: {e.strerror}") from None
    return load_inventory_text(text, path)


def load_inventory_text(text, path=INVENTORY):
    sections, header, cur = {}, [], None
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if cur is None and not sections and (s.startswith("#") or not s):
            header.append(line)
            continue
        if not s or s.startswith("#"):
            continue
        m = re.fullmatch(r"\[(.+)\]", s)
        if m:
            cur = sections.setdefault(m[1], {})
            continue
        m = re.fullmatch(r"(.*\S)\s+(\d+)", s)
        if not m or cur is None:
            raise BadInventory(f"{path}:{no}: neither `[SUITE]` nor `ENTRY AT-LEAST` "
                               f"under a [SUITE]: {line!r}")
        cur[m[1]] = int(m[2])
    return sections, header


def check_inventory(r, expected):
    """Holds r to its suite's inventory section: names and counts what is missing."""
    if r.ran_total is not None:
        least = sum(expected.values())
        if r.ran_total < least:
            r.missing = least - r.ran_total
            r.problems.append(f"missing: {r.ran_total} ran in all, at least {least} expected "
                              f"({r.missing} missing)")
        return
    for entry, least in expected.items():
        got = r.ran.get(entry, 0)
        if got >= least:
            continue
        r.missing += least - got
        if entry in r.ran:
            r.problems.append(f"missing: {entry}: {got} ran, at least {least} expected "
                              f"({least - got} missing)")
        else:
            r.problems.append(f"missing: {entry}: did not run (at least {least} expected)")
    new = [f"{e} ({n})" for e, n in r.ran.items() if e not in expected]
    if new:
        r.notes.append("not in the inventory yet: " + ", ".join(new))


def suite_name(log_path):
    name_file = log_path.with_suffix(".name")
    return name_file.read_text().strip() if name_file.exists() else log_path.stem


def read_suite(log_path, inventory=None, inventory_path=INVENTORY):
    """(name, ok, Result) of one suite; held to its inventory section unless inventory
    is None."""
    kind = log_path.name.split("-", 1)[-1].removesuffix(".log")
    name = suite_name(log_path)
    status_file = log_path.with_suffix(".status")
    status = status_file.read_text().strip() if status_file.exists() else ""
    log = log_path.read_text(errors="replace")
    try:
        r = READERS[kind](log)
        if r.passed + r.failed == 0 and not any(r.ran.values()) and "no test ran" not in r.problems:
            r.problems.append("nothing ran (0 results)")
    except KeyError:
        r = Result(detail="no count")
        r.problems.append(f"no reader for kind {kind!r}")
    except Unreadable as e:
        r = Result(detail="no count")
        r.problems.append(f"output not understood: {e}")
    if status != "0":
        r.problems.append(f"exit {status or 'unknown'}")
    if inventory is not None:
        if name in inventory:
            check_inventory(r, inventory[name])
        else:
            r.problems.append(f"no [{name}] section in {inventory_path}: add one "
                              "(scripts/test_results.py --write-inventory DIR)")
    r.failed += r.missing
    ok = not r.problems and r.failed == 0 and r.crashes == 0
    if not ok and r.failed == 0 and r.crashes == 0:
        r.failed = 1  # failed without a count of its own: one failure, never a pass
        r.problems.append("counted as 1 failed")
    if r.missing:
        r.detail += f"; {r.missing} missing against the inventory (counted failed)"
    return name, ok, r


def write_inventory(d, path):
    """Sets the inventory sections of the suites in d to what they ran; 1 if it cannot."""
    try:
        sections, header = load_inventory(path) if path.exists() else ({}, [])
    except BadInventory as e:
        print(f"test_results: {e}", file=sys.stderr)
        return 1
    suites = [read_suite(p) for p in sorted(d.glob("[0-9]*-*.log"))]
    if not suites:
        print(f"test_results: no suite output in {d}; {path} left as it was", file=sys.stderr)
        return 1
    for name, ok, r in suites:
        if not ok:
            print(f"test_results: {name} failed, so what it ran is no minimum; its section "
                  "left as it was: " + "; ".join(r.problems), file=sys.stderr)
            continue
        old = sections.get(name, {})
        for entry in sorted(set(old) | set(r.ran)):
            if old.get(entry) != r.ran.get(entry):
                print(f"  [{name}] {entry}: {old.get(entry, '-')} -> {r.ran.get(entry, '-')}")
        sections[name] = dict(r.ran)
    if not header:
        header = ["# What each suite of scripts/test must run, at least: see README.md, Tests.", ""]
    lines = list(header)
    for name, entries in sections.items():
        width = max((len(e) for e in entries), default=0)
        lines.append(f"[{name}]")
        lines += [f"{e:<{width}}  {n}" for e, n in entries.items()]
        lines.append("")
    try:
        path.write_text("\n".join(lines))
    except OSError as e:
        print(f"test_results: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"test_results: wrote {path}")
    return 0 if all(ok for _name, ok, _r in suites) else 1


def main(argv):
    args = argv[1:]
    inventory_path, write = INVENTORY, False
    if len(args) >= 2 and args[0] == "--inventory":
        inventory_path, args = Path(args[1]), args[2:]
    if args and args[0] == "--write-inventory":
        write, args = True, args[1:]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    d = Path(args[0])
    if write:
        return write_inventory(d, inventory_path)
    total = Result()
    failed_suites = []
    try:
        inventory, _header = load_inventory(inventory_path)
    except BadInventory as e:
        print(f"test_results: {e}: no suite can be held to what it must run", file=sys.stderr)
        inventory = {}
        failed_suites.append(("inventory", inventory_path))
        total.failed += 1
    logs = sorted(d.glob("[0-9]*-*.log"))
    suites = [read_suite(p, inventory, inventory_path) + (p,) for p in logs]
    ran_names = {name for name, _ok, _r, _p in suites}
    for name, entries in inventory.items():
        if name not in ran_names:
            r = Result(detail="did not run", failed=max(1, sum(entries.values())))
            r.problems.append(f"the inventory expects it: {', '.join(entries)}")
            suites.append((name, False, r, None))
    if not suites:
        print(f"test_results: no suite output in {d}", file=sys.stderr)
        failed_suites.append(("(none)", d))
        total.failed += 1
    width = max((len(name) for name, _ok, _r, _p in suites), default=0)
    for name, ok, r, p in suites:
        for attr in ("passed", "failed", "skipped", "runs", "crashes"):
            setattr(total, attr, getattr(total, attr) + getattr(r, attr))
        print(f"  {name:<{width}}  {'ok    ' if ok else 'FAILED'}  {r.detail}")
        for line in r.problems:
            print(f"  {'':<{width}}    - {line}")
        for line in r.notes:
            print(f"  {'':<{width}}    note: {line}")
        if not ok:
            failed_suites.append((name, p))
    for name, p in failed_suites:
        print(f"FAILED: {name}; " + (f"its output: {p}" if p else "it did not run"))
    print(f"suites: {total.passed} passed, {total.failed} failed, {total.skipped} skipped/ignored; "
          f"fuzz: {total.runs} runs, {total.crashes} crashes")
    return 1 if failed_suites or total.failed or total.crashes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
