"""hugetlbfs mounts and huge page pools for the sets that need them (grown for the run,
given back after), and the fresh mem-path directories of each run of a set. Part of
libvirt_objects.py.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

from libvirt_data import KIB, human, placeholder_for_dir

# Huge pages larger than the buddy allocator's blocks (x86: 1 GiB), made from a
# contiguous, aligned range of physical memory.
GIGANTIC = 1 << 30


# ---------------------------------------------------------------- huge pages

class HugePages:
    """hugetlbfs mounts of each page size the sets need, and enough free pages in the
    pools (grown for the run and shrunk back by what was added)."""

    def __init__(self, root, host):
        self.root, self.host = Path(root), host
        self.mounts, self.added, self.missing = {}, {}, {}
        # Gigantic page sizes the kernel could not assemble a page of (see prepare).
        self.unassembled = {}
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
