"""`hostmem vm resize` against a real guest (issue 22): QEMU 10 under TCG boots Debian's
6.12 kernel (the NUMA bed's, tests/qmp/virtio_mem_guest.sh) with the virtio_mem module
and a virtio-mem-pci device over a 2 GiB memdev (reserve=off, the device with
prealloc=on), once on anonymous memory and once on 2 MiB huge pages (a hugetlb memfd).
The real `hostmem vm --qmp ... resize vm0 SIZE` takes it 0 -> 1 GiB ->
256 MiB; after each step the test reads both sides itself: the guest's plugged size
from QEMU over its own QMP monitor, the guest's MemTotal from its console, and the
memdev's resident bytes from /proc/QEMU_PID/smaps over the range QEMU's own `info
ramblock` gives. Then the refusals (nothing changes) and a guest that never plugs (the
command stalls and says where it got to), on a QEMU that was never started (-S).

The measured times go to the end of the pytest run (conftest.SUMMARY)."""

import json
import re
import shutil
import subprocess
import time

import pytest

import hostmem_testkit as kit
from conftest import REPO, SUMMARY, hostmem_bin, qemu_bin, short_dir, start_server, Raw
from kernel import range_view, wait_for

MIB, GIB = 1 << 20, 1 << 30
MEMDEV = 2 * GIB
# Boot and each resize under TCG on two cores shared with other builds: 7 s and 3-15 s
# when measured here; the deadlines are for a machine several times slower.
BOOT_DEADLINE = 240
RESIZE_DEADLINE = 300
GUEST_APPEND = "console=ttyS0 panic=-1 quiet rdinit=/init memhp_default_state=online_movable"
SCHEMA_ANY = "urn:hostmem:vm:1"
SCHEMA_RESIZE = "urn:hostmem:vm:1#/$defs/resize"
SCHEMA_REPORT = "urn:hostmem:vm:1#/$defs/report"


def validate(doc, ref):
    """`doc` matches `ref` in docs/*.schema.json and the whole vm schema."""
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT202012
    resources = []
    for path in sorted((REPO / "docs").glob("*.schema.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], DRAFT202012.create_resource(schema)))
    registry = referencing.Registry().with_resources(resources)
    for r in (ref, SCHEMA_ANY):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in
                  jsonschema.Draft202012Validator({"$ref": r}, registry=registry)
                  .iter_errors(doc)]
        assert not errors, f"not a {r} document: {errors}\n{json.dumps(doc)}"


def hostmem_vm(sock, *args, timeout=RESIZE_DEADLINE):
    """`hostmem vm --qmp SOCK ARGS...`, finished."""
    return subprocess.run([hostmem_bin(), "vm", "--qmp", str(sock), *args],
                          capture_output=True, text=True, timeout=timeout)


def device(q, dev_id):
    """The virtio-mem device's data from QEMU's own query-memory-devices."""
    r = q.execute("query-memory-devices")
    found = [d["data"] for d in r["return"]
             if d["type"] == "virtio-mem" and d["data"].get("id") == dev_id]
    assert len(found) == 1, r
    return found[0]


def memdev_range(q, memdev):
    """(host address, length) of the memdev's RAM block, from QEMU's `info ramblock`:
    a device's memdev is named DEVICE-PATH/ID there (`0000:00:02.0/mem-vm0`)."""
    table = q.execute("human-monitor-command", **{"command-line": "info ramblock"})
    for row in table["return"].splitlines()[1:]:
        w = row.split()
        if w and (w[0] == memdev or w[0].endswith("/" + memdev)):
            # name, page size (number, unit), offset, used, total, HVA, ro/rw
            return int(w[6], 16), int(w[4], 16)
    pytest.fail(f"no RAM block of {memdev} in `info ramblock`: {table}")


class Qemu:
    """A QEMU with a virtio-mem device vm0 over memdev mem-vm0 and two QMP monitors:
    `sock` for hostmem, `q` (connected) for the test."""

    def __init__(self, dirpath, extra, server=None):
        self.dir = dirpath
        self.sock = dirpath / "hostmem.qmp"
        ours = dirpath / "test.qmp"
        self.console = dirpath / "console.log"
        self.argv = [qemu_bin(), "-machine", "pc", "-accel", "tcg", "-display", "none",
                     "-nodefaults", "-no-reboot",
                     "-qmp", f"unix:{self.sock},server=on,wait=off",
                     "-qmp", f"unix:{ours},server=on,wait=off", *extra]
        self.srv = (server or start_server)(self.argv, self.sock)
        try:
            self.q = Raw(ours, proc=self.srv.proc, timeout=30)
            self.hva, self.length = memdev_range(self.q, "mem-vm0")
        except BaseException:
            self.srv.kill()
            raise

    @property
    def pid(self):
        return self.srv.pid

    def host(self):
        """The kernel's view of the memdev's whole range in QEMU's process."""
        view = range_view(self.pid, self.hva, self.length)
        assert view.tiles(self.hva, self.length), (
            f"no mapping of exactly the memdev's range in /proc/{self.pid}/smaps: "
            f"{[(hex(v.start), hex(v.end)) for v in view.vmas]}")
        return view

    def close(self):
        self.q.close()
        self.srv.kill()


# ---------------------------------------------------------------- the real guest

# The memdevs a guest is booted with: anonymous memory (THP), and 2 MiB huge pages from
# the host's pool (a hugetlb memfd; plugged blocks take pages, unplugged ones are
# punched out and go back). reserve=off for both: only plugged blocks are committed.
MEMDEVS = {
    "ram": f"memory-backend-ram,id=mem-vm0,size={MEMDEV},reserve=off",
    "hugetlb": f"memory-backend-memfd,id=mem-vm0,size={MEMDEV},hugetlb=on,"
               "hugetlbsize=2M,reserve=off",
}
# Huge pages the pool is grown by for the hugetlb guest: the most it plugs (1 GiB).
HUGE_PAGES = GIB // (2 * MIB)


@pytest.fixture(scope="module", params=sorted(MEMDEVS))
def guest(request):
    """The booted guest, shared by the tests of this module for one memdev kind (a boot
    costs tens of seconds under TCG); each test reads the state as it finds it. For
    huge pages the pool is grown by what the guest may plug and put back afterwards
    (by the pages added: others' pages are left alone)."""
    kind = request.param
    r = subprocess.run([str(REPO / "tests" / "qmp" / "virtio_mem_guest.sh")],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.fail(f"tests/qmp/virtio_mem_guest.sh failed ({r.returncode}):\n{r.stderr}")
    files = dict(line.split("=", 1) for line in r.stdout.split())
    d = short_dir()
    pool = kit.HugePool()
    vm = None
    try:
        if kind == "hugetlb":
            pool.grow(HUGE_PAGES)
            if pool.added < HUGE_PAGES:
                pytest.fail(f"the 2 MiB huge page pool grew by {pool.added} of "
                            f"{HUGE_PAGES} pages (not enough contiguous memory)")
        vm = Qemu(d, ["-cpu", "max", "-smp", "1", "-m", "1G,maxmem=4G",
                      "-serial", f"file:{d / 'console.log'}",
                      "-object", MEMDEVS[kind],
                      "-device", "virtio-mem-pci,id=vm0,memdev=mem-vm0,block-size=2M,"
                                 "requested-size=0,prealloc=on",
                      "-kernel", files["VMLINUZ"], "-initrd", files["INITRD"],
                      "-append", GUEST_APPEND],
                  server=lambda argv, sock: kit.Server(argv, sock))

        def booted():
            if vm.srv.proc.poll() is not None:
                pytest.fail(f"QEMU exited ({vm.srv.proc.returncode}):\n"
                            f"{vm.console.read_text(errors='replace')}")
            return memtotals(vm) or None
        t0 = time.monotonic()
        wait_for(booted, "the guest's init printing its MemTotal", BOOT_DEADLINE,
                 interval=0.2)
        SUMMARY.append(f"virtio-mem guest ({kind}): booted in "
                       f"{time.monotonic() - t0:.1f} s")
        text = vm.console.read_text(errors="replace")
        assert "VMEM-GUEST: auto_online_blocks online_movable" in text, text
        bound = re.search(r"VMEM-GUEST: virtio_mem bound to: (\S*)", text)
        assert bound and bound.group(1).startswith("virtio"), (
            f"the guest's virtio_mem driver took no device:\n{text}")
        vm.base_memtotal = memtotals(vm)[0]
        vm.kind = kind
        yield vm
    finally:
        if vm is not None:
            vm.close()
        shutil.rmtree(d, ignore_errors=True)
        problems = pool.restore()
        assert not problems, problems


def memtotals(vm):
    """The guest's MemTotal values in bytes, as its init printed them, in order."""
    text = vm.console.read_text(errors="replace") if vm.console.exists() else ""
    return [int(kb) * 1024 for kb in
            re.findall(r"VMEM-GUEST: MemTotal:\s+(\d+) kB", text)]


def test_resize_0_to_1g_to_256m_is_followed_by_the_guest_and_the_host(guest):
    assert device(guest.q, "vm0")["size"] == 0, "the guest booted with nothing plugged"
    assert guest.host().resident == 0, "nothing of the memdev resident before the first plug"
    for target in (GIB, 256 * MIB):
        t0 = time.monotonic()
        r = hostmem_vm(guest.sock, "--json", "resize", "vm0", str(target))
        wall = time.monotonic() - t0
        assert r.returncode == 0, f"resize to {target}: exit {r.returncode}: {r.stderr}"
        doc = json.loads(r.stdout)
        validate(doc, SCHEMA_RESIZE)
        # The guest's side, from QEMU over the test's own monitor.
        d = device(guest.q, "vm0")
        assert (d["requested-size"], d["size"]) == (target, target), d
        # The host's side, from the kernel: every plugged block resident (prealloc=on),
        # every unplugged one given back (QEMU discards it).
        view = guest.host()
        assert view.resident == target, (
            f"{target >> 20} MiB plugged, but /proc/{guest.pid}/smaps shows "
            f"{view.resident >> 20} MiB resident in the memdev's range")
        huge = view.total("Shared_Hugetlb", "Private_Hugetlb")
        assert huge == (target if guest.kind == "hugetlb" else 0), (
            f"{guest.kind}: {huge >> 20} MiB of huge pages in the range")
        # The guest's own view: its MemTotal grew by what is plugged (its init looks
        # once a second).
        want = guest.base_memtotal + target
        wait_for(lambda: (memtotals(guest)[-1] == want) or None,
                 f"the guest's MemTotal at {want >> 10} kB", 30, interval=0.2)
        # What hostmem said agrees with what the test read.
        assert doc["outcome"] == "done" and doc["guest"]["plugged-size"] == d["size"], doc
        assert doc["host"]["resident-bytes"] == view.resident, doc
        SUMMARY.append(
            f"virtio-mem ({guest.kind}) resize to {target >> 20} MiB: guest plugged in "
            f"{doc['guest']['seconds']:.2f} s, host resident there in "
            f"{doc['host']['seconds']:.2f} s (command {wall:.2f} s; "
            f"{len(doc['timeline'])} steps seen)")


def test_report_shows_the_virtio_mem_device_beside_its_memdev(guest):
    r = hostmem_vm(guest.sock, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, SCHEMA_REPORT)
    view = guest.host()
    d = device(guest.q, "vm0")
    (b,) = [b for b in doc["backends"] if b["id"] == "mem-vm0"]
    assert b["attached"] and b["ramblock"]["host-addr"] == guest.hva, b["ramblock"]
    assert b["virtio-mem"] == [{
        "id": "vm0", "plugged-size": d["size"], "requested-size": d["requested-size"],
        "max-size": MEMDEV, "block-size": 2 * MIB, "node": 0, "memaddr": d["memaddr"]}], b
    assert b["kernel"]["resident-bytes"] == view.resident, (b["kernel"], view.resident)
    text = hostmem_vm(guest.sock, timeout=60).stdout
    assert (f"    virtio-mem vm0: plugged {d['size'] >> 20} MiB of "
            f"{d['requested-size'] >> 20} MiB requested, maximum 2 GiB, block 2 MiB, "
            "guest node 0") in text, text


# ---------------------------------------------------------------- no guest at all

@pytest.fixture
def stopped(sockdir):
    """A QEMU that never runs its guest (-S): a virtio-mem device vm0 (256 MiB memdev,
    2 MiB blocks), a DIMM d0 and a virtio-rng-pci rng0, which are not virtio-mem."""
    vm = Qemu(sockdir, ["-S", "-m", "128M,slots=1,maxmem=1G",
                        "-object", "memory-backend-ram,id=mem-vm0,size=256M,reserve=off",
                        "-device", "virtio-mem-pci,id=vm0,memdev=mem-vm0,block-size=2M,"
                                   "requested-size=0,prealloc=on",
                        "-object", "memory-backend-ram,id=mem-d0,size=128M",
                        "-device", "pc-dimm,id=d0,memdev=mem-d0",
                        "-device", "virtio-rng-pci,id=rng0"])
    yield vm
    vm.close()


@pytest.mark.parametrize("args, says", [
    (["nope", "64M"], 'QEMU has no device "nope" (virtio-mem devices: vm0)'),
    (["d0", "64M"], '"d0" is a dimm memory device, not a virtio-mem device'),
    (["rng0", "64M"], '"rng0" is a virtio-rng-pci device, not a virtio-mem device'),
    (["vm0", "5M"], "not a multiple of the device's block size 2 MiB "
                    "(the nearest are 4 MiB and 6 MiB)"),
    (["vm0", "512M"], "more than the device's maximum 256 MiB (its memdev mem-vm0's size)"),
    (["vm0", "1x"], 'SIZE "1x": not a size'),
], ids=["unknown-device", "a-dimm", "not-a-memory-device", "off-the-block-grid",
        "above-the-maximum", "not-a-size"])
def test_resize_refuses_bad_input_and_changes_nothing(stopped, args, says):
    r = hostmem_vm(stopped.sock, "resize", *args, timeout=60)
    assert r.returncode == 1 and says in r.stderr, (r.returncode, r.stderr)
    assert "nothing was changed" in r.stderr, r.stderr
    d = device(stopped.q, "vm0")
    assert (d["requested-size"], d["size"]) == (0, 0), d
    assert stopped.host().resident == 0


def test_resize_of_a_guest_that_never_plugs_stalls_and_says_where_it_got(stopped):
    r = hostmem_vm(stopped.sock, "--json", "resize", "vm0", "64M", "--stall", "1",
                   timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert ("vm0: the guest plugged 0 B of the 64 MiB requested and nothing moved for"
            in r.stderr and "did not move at all" in r.stderr), r.stderr
    doc = json.loads(r.stdout)
    validate(doc, SCHEMA_RESIZE)
    assert doc["outcome"] == "stalled" and doc["stalled-seconds"] >= 1, doc
    # The request stays (the guest may still come); nothing was plugged or allocated.
    d = device(stopped.q, "vm0")
    assert (d["requested-size"], d["size"]) == (64 * MIB, 0), d
    assert stopped.host().resident == 0
