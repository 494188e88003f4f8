"""Shared fixtures for the QMP monitor tests: the hostmem binary and QEMU as servers,
a raw-socket client (for what a well-behaved client never sends) and the real
`qemu.qmp` client. The server guard, the raw client, the pool guard and mounts are
tests/lib/hostmem_testkit.py's (shared with tests/libvirt).

The binary is target/release/hostmem (HOSTMEM_BIN overrides). A missing binary, a
missing QEMU or a QEMU other than 10.0.x (the reference of docs/qmp.md) fails the
tests: a skipped suite would pass unnoticed.
"""

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))

import hostmem_testkit as kit  # noqa: E402

# Lines for the end of the pytest run (the differential summary).
SUMMARY = []


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY:
        terminalreporter.write_line(line)


def hostmem_bin():
    path = Path(os.environ.get("HOSTMEM_BIN", REPO / "target" / "release" / "hostmem"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"hostmem binary not found at {path}: build it with "
                    "`cargo build --release` or set HOSTMEM_BIN")
    return str(path)


# The QEMU the differential test compares against (docs/qmp.md lists the intended
# differences from exactly this release), and how to get it on Debian bookworm.
QEMU_REFERENCE = (10, 0)
QEMU_INSTALL = ("add Debian's bookworm-backports suite to apt's sources, then "
                "`apt-get update && apt-get install -t bookworm-backports qemu-system-x86` "
                "(scripts/test does both)")


def qemu_version(path):
    """(major, minor, micro) and the first line of `path --version`; None for the
    tuple when the line does not say which QEMU it is."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"`{path} --version` failed: {e}"
    line = (out.stdout or out.stderr).strip().splitlines()[0:1]
    line = line[0] if line else f"(no output, exit status {out.returncode})"
    m = re.search(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)", line)
    return (tuple(int(g) for g in m.groups()) if m else None), line


def pytest_report_header(config):
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        return "reference QEMU: qemu-system-x86_64 is missing"
    return f"reference QEMU: {qemu_version(path)[1]} ({path})"


def qemu_bin():
    """The QEMU to compare against: it must be 10.0.x, else the test fails (a
    comparison with another release would report its differences as ours)."""
    want = ".".join(map(str, QEMU_REFERENCE))
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.fail(f"qemu-system-x86_64 is missing; the QMP tests compare against QEMU "
                    f"{want}.x: {QEMU_INSTALL}")
    version, line = qemu_version(path)
    if version is None or version[:2] != QEMU_REFERENCE:
        found = ".".join(map(str, version)) if version else "of unknown version"
        pytest.fail(f"{path} is QEMU {found} ({line!r}), but the QMP tests compare "
                    f"against QEMU {want}.x: {QEMU_INSTALL}")
    return path


def short_dir():
    """Unix socket paths must fit in 108 bytes; pytest's tmp_path may not."""
    return Path(tempfile.mkdtemp(prefix="hmqmp", dir="/tmp"))


def start_server(argv, sock):
    """A QMP server process (hostmem or QEMU) listening on `sock`, killed after the
    test if still running; a server that does not come up fails the test."""
    try:
        srv = kit.Server(argv, sock)
    except kit.ServerError as e:
        pytest.fail(str(e))
    _SERVERS.append(srv)
    return srv


def start_hostmem(sock, *args, spec=None):
    spec = spec or f"unix:{sock},server=on,wait=off"
    return start_server([hostmem_bin(), "run", "-qmp", spec, *args], sock)


def start_qemu(sock, *args):
    return start_server([qemu_bin(), "-machine", "none", "-nodefaults", "-display", "none",
                   "-qmp", f"unix:{sock},server=on,wait=off", *args], sock)


@pytest.fixture
def sockdir():
    d = short_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hostmem(sockdir):
    """A `hostmem run --qmp` with no backends; must exit 0 and remove its socket."""
    srv = start_hostmem(sockdir / "qmp.sock")
    yield srv
    rc = srv.close()
    assert rc == 0, f"hostmem exited with {rc}: {srv.stderr()}"
    assert not os.path.exists(srv.sock), "socket file left behind"


# A byte-level QMP client: sends anything, reads replies line by line.
# Raw(path, negotiate=True, timeout=10).
Raw = kit.QmpStream.unix


# Clients a test opened, closed after it even when it failed half-way; and servers it
# started, killed then if still running (a test that fails before stopping its own
# server must not leave it behind holding memory).
_OPEN = []
_SERVERS = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN:
        _OPEN.pop().close()
    while _SERVERS:
        _SERVERS.pop().kill()


class Qmp:
    """The real qemu.qmp client (QMPClient), driven synchronously."""

    def __init__(self, path, name="test"):
        from qemu.qmp import QMPClient
        _OPEN.append(self)
        self.loop = asyncio.new_event_loop()
        self.client = QMPClient(name)
        self.events = []
        self._run(self.client.connect(str(path)))

    def _run(self, coro, timeout=60):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def __call__(self, cmd, **args):
        return self._run(self.client.execute(cmd, args or None))

    def error(self, cmd, **args):
        """(class, desc) of a command that must fail."""
        from qemu.qmp import ExecuteError
        try:
            ret = self(cmd, **args)
        except ExecuteError as e:
            return e.error_class, e.error.error.desc
        pytest.fail(f"{cmd} {args} succeeded with {ret!r}; an error was expected")

    def next_event(self, timeout=10):
        return self._run(self.client.events.get(), timeout)

    def close(self):
        if self.loop.is_closed():
            return
        try:
            self._run(self.client.disconnect(), timeout=10)
        except Exception:
            pass  # the server may be gone already; the loop still must close
        finally:
            self.loop.close()


def huge_pool():
    """The 2 MiB pool's counters as the kernel shows them."""
    return kit.HugePool().counts()


@pytest.fixture
def hugepool():
    """`set(n)` gives the 2 MiB pool n pages (overcommit off); the pool and the
    overcommit setting are put back afterwards, also when the test fails. Request it
    before the server fixture, so the server (holding pages) is gone by then."""
    pool = kit.HugePool()
    pool.save("nr_overcommit_hugepages", "nr_hugepages")
    saved = pool.saved["nr_hugepages"]

    def set_pages(n):
        pool.write("nr_overcommit_hugepages", 0)
        pool.set(n)
        got = huge_pool()
        assert got["nr_hugepages"] == n and got["free_hugepages"] == n, got
        return got

    try:
        yield set_pages
    finally:
        problems = pool.restore()
        assert not problems, problems
        assert str(pool.read("nr_hugepages")) == saved


@pytest.fixture
def mounts():
    """`mount(fstype, options)` mounts a file system on a new temp directory; all are
    unmounted and removed after the test, also when it fails (request it before the
    server fixture too)."""
    made = []

    def mount(fstype, options):
        made.append(kit.mount(fstype, options, prefix=f"hm{fstype}"))
        return made[-1]

    try:
        yield mount
    finally:
        for d in reversed(made):
            kit.unmount(d)
            d.rmdir()
