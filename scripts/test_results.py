#!/usr/bin/env python3
"""Adds up the suites scripts/test ran, each from its own output.

    scripts/test_results.py DIR

DIR holds, for each suite in the order it ran, NN-KIND.name (its title), NN-KIND.log (its
output) and NN-KIND.status (its exit status). KIND says how the log is read:

  lint        lines `lint: WHAT exit N` (cargo fmt --check, cargo clippy, the
              rust-version build): one check each; `lint: WHAT skipped: WHY` is a
              skipped check (the rust-version toolchain cannot be fetched)
  cargo-test  every `test result: ... N passed; N failed; N ignored; ...` line
  pytest      pytest's summary line (`N passed, N failed, N skipped, N errors in S s`)
  libvirt     tests/libvirt's `object sets total ...` line of each phase (cli, qmp) and
              its last line `libvirt-objects: passed|FAILED`; a set is failed when QEMU
              and hostmem disagree on it (QEMU-only, hostmem-only, value mismatch,
              object-del problem), skipped when not run, passed otherwise
  numa        the guest's `numa-suite: N passed, M failed`
  fuzz        fuzz/run.sh's `fuzz: targets: ...` and per target `fuzz: T: R runs, C
              crashes, exit S`; a target is one result, passed when it ran to its end

Prints one line per suite, then the closing line

    suites: X passed, Y failed, Z skipped/ignored; fuzz: R runs, C crashes

where X, Y and Z add up the results (tests, checks, object sets, fuzz targets) of all
suites. A suite fails when it exits non-zero, counts a failure or a crash, or its output
has no count to read; a failed suite that counted no failure of its own (it exited
non-zero, or its output could not be read) adds 1 to Y, so Y is 0 only when every suite
passed. Exits 1 when any suite failed, 0 otherwise. Python 3 standard library only.
"""

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    runs: int = 0
    crashes: int = 0
    detail: str = ""  # the suite's own counts, in its own words
    problems: list = field(default_factory=list)  # why it failed beyond its counts


class Unreadable(Exception):
    """The output has no count to read."""


def lint(log):
    r = Result()
    checks = re.findall(r"^lint: (.+) exit (\d+)$", log, re.M)
    skipped = re.findall(r"^lint: (.+) skipped: (.+)$", log, re.M)
    if not checks:
        raise Unreadable("no `lint: ... exit N` line")
    r.skipped = len(skipped)
    for what, status in checks:
        if status == "0":
            r.passed += 1
        else:
            r.failed += 1
            r.problems.append(f"{what} exit {status}")
    r.detail = f"{r.passed} passed, {r.failed} failed (" + ", ".join(w for w, _ in checks) + ")"
    if skipped:
        r.detail += "; skipped: " + "; ".join(f"{w} ({why})" for w, why in skipped)
    return r


CARGO_RESULT = re.compile(
    r"^test result: (?:ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured;", re.M
)


def cargo_test(log):
    r = Result()
    lines = CARGO_RESULT.findall(log)
    if not lines:
        raise Unreadable("no `test result:` line")
    for passed, failed, ignored, _measured in lines:
        r.passed += int(passed)
        r.failed += int(failed)
        r.skipped += int(ignored)
    r.detail = (f"{r.passed} passed, {r.failed} failed, {r.skipped} ignored "
                f"({len(lines)} test binaries and doc-test runs)")
    return r


PYTEST_SUMMARY = re.compile(
    r"^=*\s*((?:\d+ [a-z]+)(?:, \d+ [a-z]+)*) in [0-9.]+s\b", re.M
)


def pytest(log):
    found = PYTEST_SUMMARY.findall(log)
    if not found:
        raise Unreadable("no pytest summary line (`N passed ... in S s`)")
    counts = {}
    for n, word in re.findall(r"(\d+) ([a-z]+)", found[-1]):
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
    return r


LIBVIRT_PHASE = re.compile(
    r"^object sets total (\d+): accepted by both (\d+), refused by both (\d+), "
    r"QEMU-only (\d+), hostmem-only (\d+), value mismatches (\d+), not run (\d+)"
    r"(?:, object-del problems (\d+))?", re.M
)


def libvirt(log):
    phases = LIBVIRT_PHASE.findall(log)
    verdict = re.findall(r"^libvirt-objects: (passed|FAILED)", log, re.M)
    if not phases:
        raise Unreadable("no `object sets total ...` line")
    if not verdict:
        raise Unreadable("no final `libvirt-objects: passed|FAILED` line")
    r = Result()
    for total, _both, _neither, qemu_only, hostmem_only, mism, not_run, cleanup in phases:
        failed = int(qemu_only) + int(hostmem_only) + int(mism) + int(cleanup or 0)
        r.failed += failed
        r.skipped += int(not_run)
        r.passed += max(0, int(total) - int(not_run) - failed)
    if verdict[-1] == "FAILED" and r.failed == 0:
        r.problems.append("libvirt-objects: FAILED")
    r.detail = (f"{r.passed} passed, {r.failed} failed, {r.skipped} not run "
                f"(object sets, {len(phases)} phases)")
    return r


def numa(log):
    found = re.findall(r"numa-suite: (\d+) passed, (\d+) failed", log)
    if not found:
        raise Unreadable("no `numa-suite: N passed, M failed` line")
    passed, failed = found[-1]
    r = Result(passed=int(passed), failed=int(failed))
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
        if t not in ran:
            r.failed += 1
            r.problems.append(f"{t}: no result")
            parts.append(f"{t} not run")
            continue
        runs, crashes, status = ran[t]
        r.crashes += crashes
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


def suite_name(log_path):
    name_file = log_path.with_suffix(".name")
    return name_file.read_text().strip() if name_file.exists() else log_path.stem


READERS = {"lint": lint, "cargo-test": cargo_test, "pytest": pytest, "libvirt": libvirt,
           "numa": numa, "fuzz": fuzz}


def read_suite(log_path):
    kind = log_path.name.split("-", 1)[1].removesuffix(".log")
    name = suite_name(log_path)
    status_file = log_path.with_suffix(".status")
    status = status_file.read_text().strip() if status_file.exists() else ""
    log = log_path.read_text(errors="replace")
    try:
        r = READERS[kind](log)
    except KeyError:
        r = Result(detail="no count")
        r.problems.append(f"no reader for kind {kind!r}")
    except Unreadable as e:
        r = Result(detail="no count")
        r.problems.append(f"output not understood: {e}")
    if status != "0":
        r.problems.append(f"exit {status or 'unknown'}")
    ok = not r.problems and r.failed == 0 and r.crashes == 0
    if not ok and r.failed == 0 and r.crashes == 0:
        r.failed = 1  # failed without a count of its own: one failure, never a pass
        r.problems.append("counted as 1 failed")
    if r.problems:
        r.detail += " [" + "; ".join(r.problems) + "]"
    return name, ok, r


def main(argv):
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    d = Path(argv[1])
    logs = sorted(d.glob("[0-9]*-*.log"))
    if not logs:
        print(f"test_results: no suite output in {d}", file=sys.stderr)
        print("suites: 0 passed, 1 failed, 0 skipped/ignored; fuzz: 0 runs, 0 crashes")
        return 1
    total = Result()
    failed_suites = []
    width = max(len(suite_name(p)) for p in logs)
    for p in logs:
        name, ok, r = read_suite(p)
        total.passed += r.passed
        total.failed += r.failed
        total.skipped += r.skipped
        total.runs += r.runs
        total.crashes += r.crashes
        print(f"  {name:<{width}}  {'ok    ' if ok else 'FAILED'}  {r.detail}")
        if not ok:
            failed_suites.append((name, p))
    for name, p in failed_suites:
        print(f"FAILED: {name}; its output: {p}")
    print(f"suites: {total.passed} passed, {total.failed} failed, {total.skipped} skipped/ignored; "
          f"fuzz: {total.runs} runs, {total.crashes} crashes")
    return 1 if failed_suites or total.failed or total.crashes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
