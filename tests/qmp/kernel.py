"""What the kernel says about a process's memory, read from /proc/PID/smaps and
/proc/PID/numa_maps: the tests' claims about memory come from here, never from
hostmem's own answers (hostmem's residency command is checked against this).

Also the waits that replace sleeps: poll an observable condition until it holds, and
fail the test with what was last seen when a deadline passes first."""

import os
import time
from dataclasses import dataclass, field

import pytest

# smaps fields summed over a range, in bytes (smaps prints them in kB).
SIZES = ("Rss", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
         "Shared_Hugetlb", "Private_Hugetlb")


@dataclass
class Vma:
    """One /proc/PID/smaps entry."""
    start: int
    end: int
    name: str  # the path column: "" for anonymous memory, "/memfd:ID (deleted)", ...
    sizes: dict = field(default_factory=dict)  # SIZES -> bytes
    vmflags: list = field(default_factory=list)

    @property
    def size(self):
        return self.end - self.start


def vmas(pid):
    """Every mapping of `pid`, from /proc/PID/smaps."""
    out = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            words = line.split()
            head = words[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                out.append(Vma(a, b, " ".join(words[5:])))
            elif head == "VmFlags:":
                out[-1].vmflags = words[1:]
            elif head.rstrip(":") in SIZES:
                out[-1].sizes[head.rstrip(":")] = int(words[1]) * 1024
    return out


@dataclass
class Range:
    """The kernel's view of [start, start+size) of a process: its VMAs (smaps) and the
    pages per node and policies of those VMAs (numa_maps)."""
    vmas: list
    pages_per_node: dict  # node (str) -> pages
    policies: list  # numa_maps policy of each VMA, in address order

    def total(self, *names):
        return sum(v.sizes.get(n, 0) for v in self.vmas for n in names)

    @property
    def rss(self):
        return self.total("Rss")

    @property
    def resident(self):
        """Rss plus hugetlb pages, which smaps counts apart from Rss."""
        return self.total("Rss", "Shared_Hugetlb", "Private_Hugetlb")

    @property
    def thp(self):
        return self.total("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped")

    @property
    def vmflags(self):
        """The VmFlags every VMA of the range has."""
        sets = [set(v.vmflags) for v in self.vmas]
        return set.intersection(*sets) if sets else set()

    @property
    def any_vmflags(self):
        """The VmFlags at least one VMA of the range has."""
        return set().union(*(v.vmflags for v in self.vmas))

    def tiles(self, start, size):
        """Whether the VMAs cover exactly [start, start+size), with no gap."""
        if not self.vmas or self.vmas[0].start != start or self.vmas[-1].end != start + size:
            return False
        return all(a.end == b.start for a, b in zip(self.vmas, self.vmas[1:]))


def numa_maps(pid, start, size):
    """(pages per node, [policy of each VMA]) of the VMAs starting in [start,
    start+size), from /proc/PID/numa_maps."""
    pages, policies = {}, []
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            words = line.split()
            if not start <= int(words[0], 16) < start + size:
                continue
            policies.append(words[1])
            for w in words[2:]:
                if w.startswith("N") and "=" in w:
                    n, p = w[1:].split("=")
                    pages[n] = pages.get(n, 0) + int(p)
    return pages, policies


def range_view(pid, start, size):
    """What the kernel says of [start, start+size) of `pid` (VMAs overlapping it)."""
    inside = [v for v in vmas(pid) if v.start < start + size and v.end > start]
    pages, policies = numa_maps(pid, start, size)
    return Range(inside, pages, policies)


def backend_view(pid, entry):
    """The kernel's view of a backend whose host address and size hostmem reported
    (a residency entry); fails unless its VMAs are exactly that range, so a wrong
    address cannot pass as an empty backend."""
    start, size = entry["host-addr"], entry["size"]
    view = range_view(pid, start, size)
    assert view.tiles(start, size), (
        f"{entry['id']}: no mapping of exactly [{start:#x}, +{size:#x}) in "
        f"/proc/{pid}/smaps: {[(hex(v.start), hex(v.end), v.name) for v in view.vmas]}")
    return view


def residency_fields(view):
    """What hostmem's residency command must say of a range the kernel shows as `view`."""
    return {"resident-bytes": view.resident, "thp-bytes": view.thp,
            "vmflags": view.vmas[0].vmflags, "pages-per-node": view.pages_per_node,
            "numa-maps-policy": view.policies[0] if view.policies else None}


def assert_residency_agrees(pid, fetch):
    """hostmem's residency entry of a backend (`fetch()` asks for it) says what the
    kernel says of the same range: its `resident-bytes`, `thp-bytes`, `vmflags`,
    `pages-per-node` and `numa-maps-policy` are each the kernel's value at a reading
    just before or just after the query (khugepaged may collapse pages into huge ones
    at any moment in between). Returns the kernel's view after it, which is what the
    caller's claims must use."""
    before = residency_fields(backend_view(pid, fetch()))  # the first query: the range
    entry = fetch()
    view = backend_view(pid, entry)
    after = residency_fields(view)
    wrong = {k: {"command": entry.get(k), "kernel before": before[k], "kernel after": v}
             for k, v in after.items() if entry.get(k) not in (before[k], v)}
    assert not wrong, (f"{entry['id']}: the residency command disagrees with "
                       f"smaps/numa_maps: {wrong}")
    return view


def wait_for(probe, what, timeout=10.0, interval=0.005):
    """Poll `probe()` until it returns something other than None and return that; fail
    the test naming `what` and the last thing probe() saw (`probe.last` if it set
    one) when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what} (last seen: "
                        f"{getattr(probe, 'last', None)})")
        time.sleep(interval)


def prealloc_in_flight(pid, size, name="", timeout=10.0):
    """Wait until the kernel shows a preallocation running in `pid`: a mapping of
    exactly `size` bytes named `name` ("" anonymous, "/memfd:ID (deleted)", ...) with
    some pages resident but not all. Returns that Vma. Fails at the deadline, or when
    the mapping is complete before it was ever seen partly resident (then the test
    cannot claim anything happened while it ran)."""
    def probe():
        found = [v for v in vmas(pid) if v.size == size and v.name == name]
        probe.last = [(hex(v.start), v.sizes.get("Rss")) for v in found]
        for v in found:
            rss = v.sizes.get("Rss", 0)
            if rss == size:
                pytest.fail(f"the {size}-byte mapping {name!r} of {pid} was complete "
                            "before it was seen partly resident: the prealloc was too "
                            "quick to observe in flight")
            if rss > 0:
                return v
        return None
    probe.last = None
    return wait_for(probe, f"a {size}-byte mapping {name!r} of process {pid} partly "
                    "resident (a prealloc in flight)", timeout)


def process_counts(pid):
    """What the kernel says the process holds: mappings (/proc/PID/maps lines), open
    fds, threads and VmRSS in bytes."""
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for _ in f)
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.split()
    return {"maps": maps, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"][0]), "rss": int(status["VmRSS"][0]) * 1024}
