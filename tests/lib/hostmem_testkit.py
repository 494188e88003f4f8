"""The tools hostmem's Python tests share, written once (the Rust tests' are in
crates/hostmem-testkit): a byte-level QMP client, a QMP server process guard (hostmem
or QEMU), a huge page pool guard and file system mounts. Imported by tests/qmp and
tests/libvirt (each puts tests/lib on sys.path); no pytest in here, so the libvirt
script can use it too. The pools are read and written from sysfs directly, not through
hostmem, which is under test."""

import json
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# How often a wait for a starting server looks again (a socket's mode is checked as
# soon as it appears, so this stays short).
POLL = 0.002


# ---------------------------------------------------------------- QMP

class QmpError(Exception):
    """A QMP conversation that cannot go on: no greeting, refused negotiation, a
    connection lost or closed."""


class QmpTimeout(QmpError, TimeoutError):
    """No message within the client's timeout (also a TimeoutError, i.e. socket.timeout,
    for tests that expect a silent server)."""


class QmpStream:
    """A byte-level QMP client over a Unix socket (`s`) or a process's stdio pipes:
    sends anything (a dict, a str, bytes), reads messages line by line and keeps the
    events in `events`. `unix` and `stdio` make one; both read the greeting and, with
    `negotiate`, leave capabilities negotiation done."""

    def __init__(self, sock=None, proc=None, negotiate=True, timeout=10, greeting=None):
        self.s, self.proc, self.timeout = sock, proc, timeout
        self.buf = b""
        self.events = []
        # A caller that read the greeting line itself (to tell it from a program's
        # other output) passes it in.
        self.greeting = json.loads(greeting) if greeting is not None else self.read()
        if self.greeting is None:
            raise QmpError("no greeting (the server ended)")
        if negotiate:
            r = self.execute("qmp_capabilities")
            if r != {"return": {}}:
                raise QmpError(f"qmp_capabilities: {r}")

    @classmethod
    def unix(cls, path, negotiate=True, timeout=10, proc=None):
        """Connects to the socket at `path`, trying again while it is missing or not
        listening yet (between bind and listen) and `proc`, if given, still runs, for
        `timeout` seconds at most; `timeout` also bounds each read."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                s.close()
                if (proc is not None and proc.poll() is not None) \
                        or time.monotonic() > deadline:
                    raise
                time.sleep(POLL)
        s.settimeout(timeout)
        return cls(sock=s, negotiate=negotiate, timeout=timeout)

    @classmethod
    def stdio(cls, proc, negotiate=True, timeout=10, greeting=None):
        """Talks to `proc` (started with stdin and stdout piped: `-qmp stdio`);
        `greeting`: the greeting line, when the caller has read it already."""
        return cls(proc=proc, negotiate=negotiate, timeout=timeout, greeting=greeting)

    def _recv(self):
        if self.s is not None:
            try:
                return self.s.recv(65536)
            except socket.timeout:
                raise QmpTimeout(f"no reply within {self.s.gettimeout()} s") from None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], self.timeout)[0]:
            raise QmpTimeout(f"no reply within {self.timeout} s")
        return os.read(fd, 65536)

    def send(self, data):
        """Sends `data` as it is (a dict or list as one JSON line); OSError when the
        server is gone or does not read (a test of that expects the OSError)."""
        if isinstance(data, (dict, list)):
            data = json.dumps(data).encode() + b"\n"
        elif isinstance(data, str):
            data = data.encode()
        if self.s is not None:
            self.s.sendall(data)
        else:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def readline(self):
        """The next line (without its newline); None at EOF."""
        while b"\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read(self):
        """The next message that is not an event; None at EOF."""
        while True:
            line = self.readline()
            if line is None:
                return None
            if not line.strip():
                continue
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def request(self, req):
        self.send(req)
        return self.read()

    def execute(self, name, **args):
        """The reply to command `name` (a `return` or an `error`); QmpError when the
        connection is lost or closed."""
        req = {"execute": name, **({"arguments": args} if args else {})}
        try:
            self.send(req)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise QmpError(f"{name}: connection lost ({e})") from None
        reply = self.read()
        if reply is None:
            raise QmpError(f"{name}: connection closed")
        return reply

    def close(self):
        if self.s is not None:
            self.s.close()


# ---------------------------------------------------------------- servers

class ServerError(Exception):
    """A server that exited before listening, or did not listen in time (it is
    killed then)."""


def wait_for_socket(proc, path, timeout):
    """True once `path` exists; False when `proc` exited first; TimeoutError when
    neither happened within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            return os.path.exists(path)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args[0]} did not create {path} within {timeout} s")
        time.sleep(POLL)
    return True


def end(proc, grace=10):
    """Ends `proc` if it still runs: SIGTERM, then SIGKILL after `grace` seconds. Its
    exit status."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Server:
    """A QMP server process (hostmem or QEMU) listening on the Unix socket `sock`,
    started by the constructor, which returns once the socket exists. `kill()` (or
    `close()`) ends it, so a test that fails half-way leaves no server holding
    memory."""

    def __init__(self, argv, sock, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 timeout=15):
        self.sock = str(sock)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=stderr)
        try:
            listening = wait_for_socket(self.proc, self.sock, timeout)
        except TimeoutError as e:
            self.kill()
            raise ServerError(str(e)) from None
        if not listening:
            out, err = self.proc.communicate()
            raise ServerError(f"{argv[0]} exited with {self.proc.returncode} before "
                              f"listening: {(err or b'').decode()}{(out or b'').decode()}")

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        """Its exit status; TimeoutError (after killing it) when it does not exit."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"{self.argv[0]} did not exit within {timeout} s") from None

    def stderr(self):
        return self.proc.stderr.read().decode() if self.proc.stderr else ""

    def close(self):
        """SIGTERM and the exit status (TimeoutError when it does not exit)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- huge pages

class HugePool:
    """The host-wide pool of `page_size` huge pages as sysfs shows it, changed for a
    while: `set`/`write` remember each file's value before the first change, `grow`
    counts the pages it added; `restore` writes the remembered values back and gives
    the added pages back (shrinks by them, so a pool another process resized meanwhile
    is not undone)."""

    def __init__(self, page_size=2 << 20):
        self.page_size = page_size
        self.dir = Path(f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB")
        self.saved = {}
        self.added = 0

    def read(self, name):
        return int((self.dir / name).read_text())

    def counts(self):
        """nr, free, resv and surplus huge pages, keyed by their sysfs names."""
        return {k: self.read(k) for k in
                ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")}

    def save(self, *names):
        for name in names:
            self.saved.setdefault(name, (self.dir / name).read_text().strip())

    def write(self, name, value):
        self.save(name)
        (self.dir / name).write_text(str(value))

    def set(self, pages):
        """Asks for `pages` pages in the pool; what the kernel made."""
        self.write("nr_hugepages", pages)
        return self.read("nr_hugepages")

    def grow(self, short):
        """Adds `short` pages (counted in `added`). When the kernel finds fewer (no
        contiguous memory left for a gigantic page), compacts memory once and asks
        again. OSError when the pool cannot be written."""
        for attempt in range(2):
            if short <= 0:
                return
            nr = self.read("nr_hugepages")
            (self.dir / "nr_hugepages").write_text(str(nr + short))
            got = self.read("nr_hugepages") - nr
            self.added += got
            short -= got
            if short > 0 and attempt == 0:
                Path("/proc/sys/vm/compact_memory").write_text("1")

    def restore(self):
        """Puts the pool back; the problems (empty when all went back)."""
        problems = []
        for name, value in reversed(list(self.saved.items())):
            try:
                (self.dir / name).write_text(value)
            except OSError as e:
                problems.append(f"{self.dir / name}: cannot write back {value}: {e}")
        if self.added:
            f = self.dir / "nr_hugepages"
            try:
                f.write_text(str(max(0, int(f.read_text()) - self.added)))
                self.added = 0
            except OSError as e:
                problems.append(f"could not shrink {f} back by {self.added}: {e}")
        self.saved = {}
        return problems


# ---------------------------------------------------------------- mounts

def mount(fstype, options, prefix="hm", parent="/tmp"):
    """A file system of `fstype` mounted on a new temp directory (root); its path.
    CalledProcessError when mount refuses."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    r = subprocess.run(["mount", "-t", fstype, "-o", options, "none", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        d.rmdir()
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)
    return d


def unmount(d):
    """Unmounts `d`, lazily when it is busy."""
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
