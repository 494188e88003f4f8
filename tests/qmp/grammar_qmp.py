"""The QMP variant of the grammar fuzzer: each case's JSON members are the arguments of
one `object-add` (sent as text, so single quotes, blanks and duplicate members reach
each server's JSON parser), given to one running QEMU and one running hostmem; what
was made is read back with qom-get and deleted again before the next case. A QEMU that
dies (an assertion on a size of 2^64-1) is restarted.
"""

import json
import os
import subprocess

import grammar_fuzz as gf


class Server:
    """One program serving QMP for the whole run, over the tests' QMP client."""

    def close(self):
        try:
            self.mon.execute("quit")
        except (gf.kit.QmpError, OSError):
            pass
        self.mon.close()
        gf.finish(self.proc)


class QemuServer(Server):
    def __init__(self, qemu):
        self.qemu = qemu
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.qemu, *gf.QEMU_ARGS, "-qmp", "stdio"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.mon = gf.kit.QmpStream.stdio(self.proc, timeout=gf.QMP_TIMEOUT)


class HostmemServer(Server):
    def __init__(self, hostmem, tmp):
        self.sock = os.path.join(tmp, f"q{os.getpid()}")
        self.proc = subprocess.Popen([hostmem, "run", "--qmp", self.sock],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if not gf.kit.wait_for_socket(self.proc, self.sock, 20):
            raise RuntimeError(f"hostmem --qmp did not start: {gf.finish(self.proc)}")
        self.mon = gf.kit.QmpStream.unix(self.sock, timeout=gf.QMP_TIMEOUT, proc=self.proc)


def add(server, text):
    """object-add with these members; the answer, with the objects read back."""
    try:
        r = server.mon.request('{"execute":"object-add","arguments":' + text + "}\n")
    except (gf.kit.QmpError, OSError, json.JSONDecodeError):
        r = None
    if r is None:
        return gf.Answer("crashed", text="connection lost")
    if "error" in r:
        return gf.Answer("refused", text=r["error"].get("desc", ""))
    objects = gf.read_back(server.mon)
    for oid in objects:
        server.mon.execute("object-del", id=oid)
    return gf.Answer("made", objects)


def run(qemu, hostmem, cases, tmp):
    q, h = QemuServer(qemu), HostmemServer(hostmem, tmp)
    verdicts = []
    try:
        for case in cases:
            text = case.text()
            qa = add(q, text)
            if qa.status == "crashed":
                stderr = gf.finish(q.proc)[1]
                qa = gf.Answer("crashed", text=stderr.strip())
                q.start()
            ha = add(h, text)
            if ha.status == "crashed":
                raise RuntimeError(f"hostmem's monitor died on object-add {text!r}")
            diffs = gf.differences(qa, ha)
            rows = gf.documented(case, diffs, qa, ha) if diffs else set()
            verdicts.append(gf.Verdict(case, qa, ha, diffs, rows))
    finally:
        q.close()
        h.close()
    return verdicts
