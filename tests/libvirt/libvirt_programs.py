"""QEMU 10 and hostmem running one object set: QMP replies as tuples, the read-back
of a set's objects, each program on the command line (cli) and as a long-lived QMP
server (qmp). The QMP client and the waits for a server are tests/lib/hostmem_testkit.py's.
Part of libvirt_objects.py.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from libvirt_data import die

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from hostmem_testkit import QmpError, QmpStream, end, wait_for_socket  # noqa: E402

QMP_TIMEOUT = 30  # seconds for one reply (a preallocation of 1 GiB takes a few)


# ---------------------------------------------------------------- QMP

class Qmp(QmpStream):
    """The kit's QMP client, with a reply as ("ok", value) or ("err", class, desc)."""

    def cmd(self, execute, **args):
        try:
            msg = self.execute(execute, **args)
        except QmpError as e:
            raise QmpError(f"{execute}: {e}") from None
        if "return" in msg:
            return ("ok", msg["return"])
        err = msg.get("error", {})
        return ("err", err.get("class"), err.get("desc"))


def readback(q, ids, backend_ids, extra_props=None):
    """What a program says about the set's objects: query-memdev entries of the set's
    backends, and per object its qom-list and qom-get of each listed property (plus
    `extra_props`, the properties the other program listed)."""
    rb = {"memdev": {}, "props": {}, "list": {}}
    r = q.cmd("query-memdev")
    if r[0] == "ok":
        for e in r[1]:
            if e.get("id") in backend_ids:
                rb["memdev"][e["id"]] = e
    else:
        rb["memdev"] = {"error": r[1:]}
    for oid in ids:
        path = f"/objects/{oid}"
        r = q.cmd("qom-list", path=path)
        listed = {p["name"]: p["type"] for p in r[1]} if r[0] == "ok" else {}
        rb["list"][oid] = listed if r[0] == "ok" else {"error": r[1:]}
        names = set(n for n, ty in listed.items() if not ty.startswith("child<"))
        names |= set((extra_props or {}).get(oid, ()))
        for name in sorted(names):
            g = q.cmd("qom-get", path=path, property=name)
            rb["props"][(oid, name)] = ("ok", g[1]) if g[0] == "ok" else ("err", g[2])
    return rb


# ---------------------------------------------------------------- the two programs

@dataclass
class Outcome:
    accepted: bool
    message: str = ""  # refusal message
    warnings: list = field(default_factory=list)
    rb: dict = None
    cleanup: str = ""  # object-del left something behind (qmp phase)


def clean_message(prog, text, objs):
    """The refusal from stderr, without the program name and the -object echo."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # the last error line; both prefix `PROG: -object TEXT: `
    for ln in reversed(lines):
        for _, t in objs:
            for pre in (f"{prog}: -object {t}: ",):
                if ln.startswith(pre):
                    return ln[len(pre):]
        if ln.startswith(f"{prog}: ") and "warning:" not in ln:
            return ln[len(prog) + 2:]
    return " | ".join(lines[-3:]) or "(no message)"


def warnings_of(prog, text):
    out = []
    for ln in text.splitlines():
        low = ln.lower()
        if "warning" in low:
            ln = ln.removeprefix(f"{prog}: ")
            out.append(ln)
    return out


def stderr_of(errf):
    errf.seek(0)
    return errf.read().decode(errors="replace")


def refused(prog, errf, objs):
    """The set was refused: the message and warnings `prog` wrote to `errf`."""
    err = stderr_of(errf)
    return Outcome(False, clean_message(prog, err, objs), warnings_of(prog, err))


def accepted(prog, errf, rb):
    """The set was made and read back as `rb`; the warnings `prog` wrote to `errf`."""
    return Outcome(True, warnings=warnings_of(prog, stderr_of(errf)), rb=rb)


def read_or_kill(q, p, errf, ids, backend_ids, extra_props=None):
    """readback(), or the process killed and the error given with its last stderr."""
    try:
        return readback(q, ids, backend_ids, extra_props)
    except QmpError as e:
        p.kill()
        p.wait()
        raise QmpError(f"{e}; stderr: {stderr_of(errf)[-300:]}")


class Runner:
    def __init__(self, qemu, hostmem, workdir):
        self.qemu, self.hostmem, self.work = qemu, hostmem, Path(workdir)
        self.qemu_name = os.path.basename(qemu)

    def qemu_cli(self, objs, ids, backend_ids):
        argv = [self.qemu, "-machine", "none", "-nodefaults", "-display", "none",
                "-qmp", "stdio"]
        for _, t in objs:
            argv += ["-object", t]
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=errf)
        try:
            try:
                q = Qmp.stdio(p, timeout=QMP_TIMEOUT)
            except QmpError:
                p.wait(timeout=60)
                return refused(self.qemu_name, errf, objs)
            rb = read_or_kill(q, p, errf, ids, backend_ids)
            q.cmd("quit")
            p.wait(timeout=60)
            return accepted(self.qemu_name, errf, rb)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def hostmem_cli(self, objs, ids, backend_ids, extra_props):
        sockdir = Path(tempfile.mkdtemp(prefix="hmlv", dir="/tmp"))
        sock = sockdir / "qmp.sock"
        argv = [self.hostmem, "run", "-qmp", f"unix:{sock},server=on,wait=off"]
        for _, t in objs:
            argv += ["-object", t]
        errf, outf = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=outf, stderr=errf)
        try:
            try:
                listening = wait_for_socket(p, sock, QMP_TIMEOUT)
            except TimeoutError as e:
                raise QmpError(str(e)) from None
            if not listening:
                return refused("hostmem", errf, objs)
            try:
                q = Qmp.unix(sock, timeout=QMP_TIMEOUT, proc=p)
            except (QmpError, OSError):
                if p.wait(timeout=60) != 0:  # gone between listening and our connect
                    return refused("hostmem", errf, objs)
                raise
            rb = read_or_kill(q, p, errf, ids, backend_ids, extra_props)
            q.cmd("quit")
            q.close()
            p.wait(timeout=60)
            return accepted("hostmem", errf, rb)
        finally:
            end(p)
            shutil.rmtree(sockdir, ignore_errors=True)


class Server:
    """A long-lived QMP server (QEMU on stdio, hostmem on a socket) for object-add."""

    def __init__(self, kind, runner):
        self.kind, self.runner = kind, runner
        self.p = self.q = None
        self.start()

    def start(self):
        r = self.runner
        self.errf = tempfile.TemporaryFile()
        if self.kind == "qemu":
            self.p = subprocess.Popen(
                [r.qemu, "-machine", "none", "-nodefaults", "-display", "none",
                 "-qmp", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.errf)
            self.q = Qmp.stdio(self.p, timeout=QMP_TIMEOUT)
        else:
            self.sockdir = Path(tempfile.mkdtemp(prefix="hmlv", dir="/tmp"))
            sock = self.sockdir / "qmp.sock"
            self.p = subprocess.Popen(
                [r.hostmem, "run", "-qmp", f"unix:{sock},server=on,wait=off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errf)
            try:
                listening = wait_for_socket(self.p, sock, 30)
            except TimeoutError:
                listening = False
            if not listening:
                die("hostmem -qmp did not start")
            self.q = Qmp.unix(sock, timeout=QMP_TIMEOUT, proc=self.p)

    def stderr_mark(self):
        self.errf.seek(0, os.SEEK_END)
        return self.errf.tell()

    def stderr_since(self, mark):
        self.errf.seek(mark)
        return self.errf.read().decode(errors="replace")

    def stop(self, kill=False):
        if kill and self.p.poll() is None:
            self.p.kill()
        try:
            if self.q and self.p.poll() is None:
                self.q.cmd("quit")
        except (QmpError, OSError):
            pass
        if self.q:
            self.q.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        if self.kind == "hostmem":
            shutil.rmtree(self.sockdir, ignore_errors=True)

    def restart(self, kill=False):
        self.stop(kill)
        self.start()

    def run_set(self, qmp_args, ids, backend_ids, extra_props=None):
        """object-add each, read back, object-del in reverse; (Outcome, cleanup problem)."""
        prog = self.runner.qemu_name if self.kind == "qemu" else "hostmem"
        mark = self.stderr_mark()
        added, outcome = [], None
        for args in qmp_args:
            r = self.q.cmd("object-add", **args)
            if r[0] != "ok":
                outcome = Outcome(False, r[2])
                break
            added.append(args["id"])
        if outcome is None:
            outcome = Outcome(True, rb=readback(self.q, ids, backend_ids, extra_props))
        problem = ""
        for oid in reversed(added):
            r = self.q.cmd("object-del", id=oid)
            if r[0] != "ok":
                problem = f"object-del {oid}: {r[2]}"
        if not problem:
            left = self.q.cmd("qom-list", path="/objects")
            names = {p["name"] for p in left[1]} if left[0] == "ok" else set()
            if names & set(ids):
                problem = f"still in /objects after object-del: {sorted(names & set(ids))}"
        outcome.warnings = warnings_of(prog, self.stderr_since(mark))
        return outcome, problem
