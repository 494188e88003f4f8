"""Tests of scripts/test_results.py on small synthetic logs in the formats of the real ones:
each way a count could lie (a binary that exits early, a child's result line inside a
panic message, a missing binary or test file or check, a suite that ran nothing) must
fail and name what is missing. Run by scripts/test as a suite of its own:
`python3 -m pytest -q -rap scripts/test_test_results.py`.
"""

import re
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_results as tr  # noqa: E402

HASH = "0123456789abcdef"


def binary(header, n, passed=None, failed=0, ignored=0, result=True, body=""):
    """One test binary's part of a `cargo test` log (libtest's pretty format)."""
    passed = n - failed - ignored if passed is None else passed
    lines = [header, "", f"running {n} test{'' if n == 1 else 's'}"]
    lines += [f"test t{i} ... ok" for i in range(passed)]
    lines += [f"test f{i} ... FAILED" for i in range(failed)]
    lines += [f"test i{i} ... ignored" for i in range(ignored)]
    lines.append(body)
    if result:
        verdict = "FAILED" if failed else "ok"
        lines.append(f"test result: {verdict}. {passed} passed; {failed} failed; {ignored} ignored; "
                     "0 measured; 0 filtered out; finished in 0.01s")
    return "\n".join(lines) + "\n\n"


def running(src, name):
    return f"     Running {src} (target/debug/deps/{name}-{HASH})"


LIB = running("unittests src/lib.rs", "hostmem")
BACKEND = running("tests/backend.rs", "backend")
SOUND = running("tests/soundness.rs", "soundness")
DOC = "   Doc-tests hostmem"

CARGO_OK = binary(LIB, 5) + binary(BACKEND, 4) + binary(SOUND, 3) + binary(DOC, 2)
CARGO_INV = """[cargo test]
unittests src/lib.rs (hostmem)  5
tests/backend.rs (backend)      4
tests/soundness.rs (soundness)  3
Doc-tests hostmem               2
"""

# A soundness test that ran its binary again in a child, which failed: the child's
# output, its own `test result:` line included, is in the parent's panic message.
CHILD_PANIC = """
failures:

---- f0 stdout ----

thread 'f0' panicked at crates/hostmem/tests/soundness.rs:29:5:
child for f0 died: status Some(101), signal None

running 1 test
test f0 ... FAILED

failures:

---- f0 stdout ----
CHILD: oops

failures:
    f0

test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out; finished in 0.01s


failures:
    f0
"""

NUMA_CHECKS = ["bind-one-node", "bind-two-nodes", "local"]
NUMA_INV = "[NUMA guest]\n" + "".join(f"{c}  1\n" for c in NUMA_CHECKS)


def numa_log(checks, passed=None, failed=0):
    lines = ["NUMA-VM: booted", "numa-suite: kernel 6.12, nodes online 0-4"]
    lines += [f"ok   {c} (0.68 s): bind:1 N1=16384" for c in checks]
    lines.insert(3, "[   32.5] Out of memory: Killed process 288 (qemu-system-x86)")
    passed = len(checks) if passed is None else passed
    lines += [f"numa-suite: {passed} passed, {failed} failed", "NUMA-VM: suite exit 0", "NUMA-VM: PASS"]
    return "\n".join(lines) + "\n"


PYTEST_OK = """........                                                 [100%]
=========================== short test summary info ============================
PASSED tests/qmp/test_load.py::test_churn
PASSED tests/qmp/test_load.py::test_32_clients
PASSED tests/qmp/test_monitor.py::test_stop[quit]
PASSED tests/qmp/test_monitor.py::test_stop[SIGINT]
differential: 307 requests compared, 39 differ, 39 of them intended
4 passed in 38.58s
"""
PYTEST_INV = "[QMP tests]\ntests/qmp/test_load.py  2\ntests/qmp/test_monitor.py  2\n"


def results_dir(tmp_path, *suites):
    """The DIR scripts/test leaves: suites as (kind, name, log[, status])."""
    d = Path(tempfile.mkdtemp(prefix="results.", dir=tmp_path))
    for i, (kind, name, log, *status) in enumerate(suites, 1):
        base = d / f"{i:02d}-{kind}"
        base.with_suffix(".log").write_text(log)
        base.with_suffix(".name").write_text(name + "\n")
        base.with_suffix(".status").write_text(f"{status[0] if status else 0}\n")
    return d


def check(tmp_path, capsys, inventory, *suites):
    """test_results.py DIR with this inventory: (exit code, its output)."""
    inv = tmp_path / "expected_tests.txt"
    inv.write_text(inventory)
    rc = tr.main(["test_results.py", "--inventory", str(inv), str(results_dir(tmp_path, *suites))])
    captured = capsys.readouterr()
    return rc, captured.err + captured.out


def closing(out):
    return out.strip().splitlines()[-1]


def test_a_full_cargo_log_passes_with_its_counts(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", CARGO_OK))
    assert rc == 0, out
    assert closing(out) == "suites: 14 passed, 0 failed, 0 skipped/ignored; fuzz: 0 runs, 0 crashes"


def test_exit_0_mid_binary_names_the_binary_and_the_tests_never_reported(tmp_path, capsys):
    # backend's 3rd test called std::process::exit(0): 2 tests reported, no result line,
    # and cargo went on to the next binary as if all was well (exit status 0).
    log = binary(LIB, 5) + binary(BACKEND, 4, passed=2, result=False) + binary(SOUND, 3) + binary(DOC, 2)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert ("tests/backend.rs (backend): `running 4 tests` and no `test result:` line of its own: "
            "2 of them never reported") in out
    assert "missing: tests/backend.rs (backend): 2 ran, at least 4 expected (2 missing)" in out
    assert closing(out) == "suites: 12 passed, 2 failed, 0 skipped/ignored; fuzz: 0 runs, 0 crashes"


def test_exit_0_in_the_last_binary_is_caught_too(tmp_path, capsys):
    log = binary(LIB, 5) + binary(BACKEND, 4) + binary(SOUND, 3) + binary(DOC, 2, passed=0, result=False)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "missing: Doc-tests hostmem: 0 ran, at least 2 expected (2 missing)" in out


def test_a_childs_result_line_in_a_panic_message_is_not_counted(tmp_path, capsys):
    # 1 real failure; the child's `test result: FAILED. 0 passed; 1 failed` must not
    # make it 2 (nor count the child's 7 filtered out anywhere).
    log = (binary(LIB, 5) + binary(BACKEND, 4) + binary(SOUND, 3, failed=1, body=CHILD_PANIC)
           + binary(DOC, 2))
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log, 101))
    assert rc == 1, out
    assert closing(out) == "suites: 13 passed, 1 failed, 0 skipped/ignored; fuzz: 0 runs, 0 crashes"
    assert "missing" not in out


def test_a_childs_result_line_does_not_stand_in_for_a_parent_that_died(tmp_path, capsys):
    # The parent printed its failures (the child's result line among them) and was then
    # killed before its own result line: the child's line must not be taken for it.
    log = (binary(LIB, 5) + binary(BACKEND, 4) + binary(SOUND, 3, failed=1, body=CHILD_PANIC, result=False)
           + binary(DOC, 2))
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log, 101))
    assert rc == 1, out
    assert "tests/soundness.rs (soundness): `running 3 tests` and no `test result:` line" in out
    assert "1 `test result:` line(s) in its output not counted (a child's)" in out


def test_a_missing_binary_is_named(tmp_path, capsys):
    log = binary(LIB, 5) + binary(SOUND, 3) + binary(DOC, 2)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "missing: tests/backend.rs (backend): did not run (at least 4 expected)" in out
    assert closing(out) == "suites: 10 passed, 4 failed, 0 skipped/ignored; fuzz: 0 runs, 0 crashes"


def test_a_deleted_test_is_named_by_its_binary_and_count(tmp_path, capsys):
    log = binary(LIB, 5) + binary(BACKEND, 3) + binary(SOUND, 3) + binary(DOC, 2)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "missing: tests/backend.rs (backend): 3 ran, at least 4 expected (1 missing)" in out


def test_an_ignored_test_did_not_run(tmp_path, capsys):
    log = binary(LIB, 5) + binary(BACKEND, 4, ignored=1) + binary(SOUND, 3) + binary(DOC, 2)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "missing: tests/backend.rs (backend): 3 ran, at least 4 expected (1 missing)" in out
    assert "1 skipped/ignored" in closing(out)


def test_more_tests_and_a_new_binary_pass_and_are_noted(tmp_path, capsys):
    new = running("tests/plug.rs", "plug")
    log = binary(LIB, 7) + binary(BACKEND, 4) + binary(SOUND, 3) + binary(DOC, 2) + binary(new, 2)
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 0, out
    assert "note: not in the inventory yet: tests/plug.rs (plug) (2)" in out


def test_binaries_are_matched_by_source_and_name_not_by_hash(tmp_path, capsys):
    # hostmem-cli's binary is called hostmem too: src/main.rs vs src/lib.rs tells them apart.
    log = (binary(LIB, 5) + binary(running("unittests src/main.rs", "hostmem").replace(HASH, "f" * 16), 0)
           + binary(BACKEND, 4) + binary(SOUND, 3) + binary(DOC, 2))
    inv = CARGO_INV + "unittests src/main.rs (hostmem)  0\n"
    rc, out = check(tmp_path, capsys, inv, ("cargo-test", "cargo test", log))
    assert rc == 0, out


def test_zero_tests_fail(tmp_path, capsys):
    log = binary(LIB, 0) + binary(DOC, 0)
    rc, out = check(tmp_path, capsys, "[cargo test]\nunittests src/lib.rs (hostmem)  0\n",
                    ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "nothing ran (0 results)" in out
    assert closing(out).startswith("suites: 0 passed, 1 failed")


def test_cargo_test_q_output_has_no_binaries_to_hold_to_the_inventory(tmp_path, capsys):
    log = "\nrunning 5 tests\n.....\ntest result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.05s\n"
    rc, out = check(tmp_path, capsys, CARGO_INV, ("cargo-test", "cargo test", log))
    assert rc == 1, out
    assert "no `Running ...` or `Doc-tests ...` header" in out
    assert "missing: unittests src/lib.rs (hostmem): did not run" in out


def test_numa_suite_with_0_passed_0_failed_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", numa_log([])))
    assert rc == 1, out
    assert "nothing ran (0 results)" in out
    assert "missing: bind-one-node: did not run (at least 1 expected)" in out


def test_numa_checks_pass_by_name_despite_kernel_lines(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", numa_log(NUMA_CHECKS)))
    assert rc == 0, out
    assert "3 passed, 0 failed" in closing(out)


def test_a_numa_check_gone_is_named(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", numa_log(NUMA_CHECKS[1:])))
    assert rc == 1, out
    assert "missing: bind-one-node: did not run (at least 1 expected)" in out


def test_a_numa_summary_that_disagrees_with_its_check_lines_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", numa_log(NUMA_CHECKS, passed=4)))
    assert rc == 1, out
    assert "printed 3 `ok`/`FAIL` check lines but `numa-suite: 4 passed, 0 failed`" in out


def test_a_numa_suite_that_ended_early_fails(tmp_path, capsys):
    log = numa_log(NUMA_CHECKS).split("numa-suite: 3 passed")[0]
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", log))
    assert rc == 1, out
    assert "no `numa-suite: N passed, M failed` line" in out


def test_pytest_counts_each_file_from_the_short_summary(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, PYTEST_INV, ("pytest", "QMP tests", PYTEST_OK))
    assert rc == 0, out


def test_a_pytest_file_with_fewer_tests_is_named(tmp_path, capsys):
    log = PYTEST_OK.replace("PASSED tests/qmp/test_load.py::test_churn\n", "").replace("4 passed", "3 passed")
    rc, out = check(tmp_path, capsys, PYTEST_INV + "tests/qmp/test_faults.py  1\n",
                    ("pytest", "QMP tests", log))
    assert rc == 1, out
    assert "missing: tests/qmp/test_load.py: 1 ran, at least 2 expected (1 missing)" in out
    assert "missing: tests/qmp/test_faults.py: did not run (at least 1 expected)" in out


def test_a_summary_line_in_a_tests_output_is_not_pytests(tmp_path, capsys):
    # A failed test's captured output holds a summary-like line; pytest's own is last.
    log = ("F...\n=== FAILURES ===\n--- Captured stdout call ---\n24 passed in 1.00s\n"
           "=== short test summary info ===\nFAILED tests/qmp/test_load.py::test_churn - assert 0\n"
           "PASSED tests/qmp/test_load.py::test_32_clients\n"
           "PASSED tests/qmp/test_monitor.py::test_stop[quit]\nPASSED tests/qmp/test_monitor.py::test_stop[SIGINT]\n"
           "1 failed, 3 passed in 2.00s\n")
    rc, out = check(tmp_path, capsys, PYTEST_INV, ("pytest", "QMP tests", log, 1))
    assert rc == 1, out
    assert closing(out).startswith("suites: 3 passed, 1 failed, ")


def test_pytest_without_rap_is_held_to_its_total_only_and_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, PYTEST_INV,
                    ("pytest", "QMP tests", "....\n4 passed in 38.58s\n"))
    assert rc == 1, out
    assert "no short test summary (run pytest with -rap)" in out
    assert "missing" not in out
    assert closing(out).startswith("suites: 4 passed, 1 failed, ")
    rc, out = check(tmp_path, capsys, PYTEST_INV,
                    ("pytest", "QMP tests", "...\n2 passed, 1 failed in 38.58s\n", 1))
    assert "missing: 3 ran in all, at least 4 expected (1 missing)" in out
    assert closing(out).startswith("suites: 2 passed, 2 failed, ")


def test_pytest_that_ran_no_test_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, PYTEST_INV, ("pytest", "QMP tests", "\nno tests ran in 0.01s\n", 5))
    assert rc == 1, out
    assert "no test ran" in out


FUZZ = ("fuzz: targets: nodelist objspec\nfuzz: nodelist: 317935 runs, 0 crashes, exit 0 (10 s)\n"
        "fuzz: objspec: 161407 runs, 0 crashes, exit 0 (10 s)\n")


def test_each_fuzz_target_must_have_run(tmp_path, capsys):
    inv = "[fuzz]\nnodelist  1\nobjspec  1\nqmp  1\n"
    rc, out = check(tmp_path, capsys, inv, ("fuzz", "fuzz", FUZZ))
    assert rc == 1, out
    assert "missing: qmp: did not run (at least 1 expected)" in out
    assert closing(out) == "suites: 2 passed, 1 failed, 0 skipped/ignored; fuzz: 479342 runs, 0 crashes"


LIBVIRT = """== cli: -object on the command line
object sets total 153: accepted by both 150, refused by both 3, QEMU-only 0, hostmem-only 0, value mismatches 0, not run 0
== qmp: object-add over QMP
object sets total 153: accepted by both 140, refused by both 3, QEMU-only 0, hostmem-only 0, value mismatches 0, not run 10
libvirt-objects: passed
"""


def test_libvirt_sets_not_run_are_missing(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, "[libvirt objects]\ncli  153\nqmp  153\n",
                    ("libvirt", "libvirt objects", LIBVIRT))
    assert rc == 1, out
    assert "missing: qmp: 143 ran, at least 153 expected (10 missing)" in out


LIBVIRT_GIGANTIC = """== cli: -object on the command line
object sets total 153: accepted by both 136, refused by both 2, QEMU-only 0, hostmem-only 0, value mismatches 0, not run 0
skipped by name: 15 object sets: the kernel could not assemble 1 1G huge page(s) (...)
  skipped: hugepages-shared.x86_64-latest.args: memory-backend-file ...
== qmp: object-add over QMP
object sets total 153: accepted by both 136, refused by both 2, QEMU-only 0, hostmem-only 0, value mismatches 0, not run 0
skipped by name: 15 object sets: the kernel could not assemble 1 1G huge page(s) (...)
libvirt-objects: passed
"""


def test_libvirt_sets_skipped_by_name_are_skipped_not_passed(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, "[libvirt objects]\ncli  138\nqmp  138\n",
                    ("libvirt", "libvirt objects", LIBVIRT_GIGANTIC))
    assert rc == 0, out
    assert closing(out) == "suites: 276 passed, 0 failed, 30 skipped/ignored; fuzz: 0 runs, 0 crashes"
    rc, out = check(tmp_path, capsys, "[libvirt objects]\ncli  153\nqmp  153\n",
                    ("libvirt", "libvirt objects", LIBVIRT_GIGANTIC))
    assert rc == 1, out
    assert "missing: cli: 138 ran, at least 153 expected (15 missing)" in out


def test_lint_checks_skipped_by_name_are_there(tmp_path, capsys):
    log = ("lint: cargo fmt --check exit 0\n"
           "lint: cargo +1.87 check (rust-version) skipped: rustup cannot install Rust 1.87\n")
    inv = "[fmt/clippy]\ncargo fmt --check  1\ncargo +1.87 check (rust-version)  1\ncargo clippy -D warnings  1\n"
    rc, out = check(tmp_path, capsys, inv, ("lint", "fmt/clippy", log))
    assert rc == 1, out
    assert "missing: cargo clippy -D warnings: did not run" in out
    assert "rust-version" not in out.split("missing:")[1]


def test_a_suite_the_inventory_expects_that_did_not_run_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, CARGO_INV + NUMA_INV, ("cargo-test", "cargo test", CARGO_OK))
    assert rc == 1, out
    assert re.search(r"NUMA guest +FAILED +did not run", out)
    assert "FAILED: NUMA guest; it did not run" in out
    assert closing(out).startswith("suites: 14 passed, 3 failed, ")


def test_a_suite_without_an_inventory_section_fails(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, NUMA_INV, ("numa", "NUMA guest", numa_log(NUMA_CHECKS)),
                    ("cargo-test", "cargo test", CARGO_OK))
    assert rc == 1, out
    assert "no [cargo test] section in" in out


def test_a_malformed_inventory_fails_and_says_where(tmp_path, capsys):
    rc, out = check(tmp_path, capsys, "[cargo test]\nno count here\n", ("cargo-test", "cargo test", CARGO_OK))
    assert rc == 1
    assert "expected_tests.txt:2: neither `[SUITE]` nor `ENTRY AT-LEAST`" in out


def test_write_inventory_records_what_ran_and_keeps_the_header(tmp_path, capsys):
    inv = tmp_path / "expected_tests.txt"
    inv.write_text("# header line\n\n[fuzz]\nnodelist  1\n\n[cargo test]\nold (old)  9\n")
    d = results_dir(tmp_path, ("cargo-test", "cargo test", CARGO_OK))
    assert tr.main(["x", "--inventory", str(inv), "--write-inventory", str(d)]) == 0
    out = capsys.readouterr().out
    assert "[cargo test] old (old): 9 -> -" in out and "[cargo test] Doc-tests hostmem: - -> 2" in out
    sections, header = tr.load_inventory(inv)
    assert header[0] == "# header line"
    assert sections == {"fuzz": {"nodelist": 1}, **tr.load_inventory_text(CARGO_INV)[0]}
    assert tr.main(["x", "--inventory", str(inv), str(d)]) == 1  # fuzz did not run
    assert "cargo test  ok" in capsys.readouterr().out


def test_write_inventory_leaves_a_failed_suites_section_as_it_was(tmp_path, capsys):
    inv = tmp_path / "expected_tests.txt"
    inv.write_text(CARGO_INV + "\n[fuzz]\nnodelist  1\n")
    log = binary(LIB, 5) + binary(BACKEND, 4, passed=2, result=False)
    d = results_dir(tmp_path, ("cargo-test", "cargo test", log), ("fuzz", "fuzz", FUZZ))
    assert tr.main(["x", "--inventory", str(inv), "--write-inventory", str(d)]) == 1
    assert "cargo test failed, so what it ran is no minimum" in capsys.readouterr().err
    assert tr.load_inventory(inv)[0] == {**tr.load_inventory_text(CARGO_INV)[0],
                                         "fuzz": {"nodelist": 1, "objspec": 1}}


def test_the_committed_inventory_has_a_section_for_each_suite_of_scripts_test():
    script = (Path(__file__).resolve().parent / "test").read_text()
    suites = set(re.findall(r'^run_suite \S+ "([^"]+)"', script, re.M))
    sections, header = tr.load_inventory(tr.INVENTORY)
    assert suites and set(sections) == suites
    assert any("--write-inventory" in line for line in header)


@pytest.mark.parametrize("kind", sorted(tr.READERS))
def test_no_output_at_all_is_a_failure_not_a_crash(tmp_path, capsys, kind):
    rc, out = check(tmp_path, capsys, f"[{kind}]\n", (kind, kind, "", 0))
    assert rc == 1, out
    assert re.search(rf"{re.escape(kind)} +FAILED", out)
