"""hugetlbfs mounts and huge page pools for the sets that need them (grown for the run,
given back after, with tests/lib/hostmem_testkit.py's pool guard), and the fresh
mem-path directories of each run of a set. Part of libvirt_objects.py.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

from libvirt_data import human, placeholder_for_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from hostmem_testkit import HugePool, unmount  # noqa: E402

# Huge pages larger than the buddy allocator's blocks (x86: 1 GiB), made from a
# contiguous, aligned range of physical memory.
GIGANTIC = 1 << 30


# ---------------------------------------------------------------- huge pages

class HugePages:
    """hugetlbfs mounts of each page size the sets need, and enough free pages in the
    pools (grown for the run and shrunk back by what was added)."""

    def __init__(self, root, host):
        self.root, self.host = Path(root), host
        self.mounts, self.pools, self.missing = {}, {}, {}
        # Gigantic page sizes the kernel could not assemble a page of (see prepare).
        self.unassembled = {}
        self.regrown, self.seen = False, {}

    def _pool(self, page):
        return self.pools.setdefault(page, HugePool(page))

    def free(self, page):
        return self._pool(page).read("free_hugepages")

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
            if self.free(page) < pages and page >= GIGANTIC:
                # The kernel assembles a gigantic page from a free, aligned 1 GiB of
                # physical memory: after long uptime there may be none, whatever the
                # free total. Such sets are skipped by name (README), never passed.
                self.unassembled[page] = (
                    f"the kernel could not assemble {pages} {human(page)} huge page(s) "
                    f"(no free {human(page)}-aligned block of physical memory, even after "
                    f"compaction; the pool has {self.free(page)} free)")
            elif self.free(page) < pages:
                self.missing[page] = (f"needs {pages} free {human(page)} huge pages, the "
                                      f"pool has {self.free(page)} free")

    def nr(self, page):
        return self._pool(page).read("nr_hugepages")

    def grow(self, page, short):
        """Add `short` pages to the pool (to be given back by release()); when the
        kernel finds fewer (no contiguous memory left for a 1 GiB page), memory is
        compacted once and the kernel asked again, rather than leave the sets that
        need them unrun."""
        self._pool(page).grow(short)

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
        for page, pool in self.pools.items():
            for problem in pool.restore():
                print(f"warning: the {human(page)} pool: {problem}", file=sys.stderr)
        for mnt in self.mounts.values():
            unmount(mnt)


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
