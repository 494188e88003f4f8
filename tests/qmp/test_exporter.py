"""`hostmem exporter` (issue 23) against a running QEMU 10 and a real Prometheus
(Debian's `prometheus` package: /usr/bin/prometheus and /usr/bin/promtool; scripts/test
installs it). Every figure is compared with what this test reads itself from
/proc/QEMU_PID/smaps and numa_maps over each memdev's range, the range taken from
QEMU's own `info ramblock` on a second QMP monitor of the test's.

The alert rules shipped in docs/alerts/hostmem.rules.yml run under `promtool test rules`
on series taken from a real scrape. This host has one NUMA node, so a backend bound to
a node its memory is not on cannot be made here: the misplaced case is the real scrape
of a memdev bound to node 0 with its requested node relabelled to 1 and its share on
the requested nodes recomputed from its real resident bytes per node (0 on node 1),
said as such in the test; the node that cannot give the next plug is the real scrape
with node 0's available figure lowered below the real pending plug."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, Qmp, hostmem_bin, kit, qemu_bin, short_dir
from kernel import range_view, wait_for

MIB = 1 << 20
RULES = REPO / "docs" / "alerts" / "hostmem.rules.yml"
PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
INSTALL = "apt-get install prometheus (scripts/test installs it)"
# Seconds the exporter waits for each VM; Prometheus scrapes every 1 s with a 1 s
# timeout, so a stopped VM must not hold a scrape longer than this.
VM_TIMEOUT = 0.8


def tool(path):
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: {INSTALL}")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, accept=None, timeout=10):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode(), r.headers.get("Content-Type", "")


class Qemu:
    """A stopped QEMU 10 (`-machine pc -S`, TCG) with one monitor for the exporter and
    one for the test; memdevs given as (object spec, NUMA node or None)."""

    def __init__(self, d, name, memdevs, extra=()):
        self.mon, self.ours = d / f"{name}.qmp", d / f"{name}-test.qmp"
        numa = sum(int(re.search(r"size=(\d+)M", o)[1]) for o, n in memdevs if n)
        argv = [qemu_bin(), "-machine", "pc", "-accel", "tcg", "-S", "-display", "none",
                "-nodefaults", "-name", name, "-m", f"{numa}M,maxmem={numa + 256}M,slots=1",
                "-qmp", f"unix:{self.mon},server=on,wait=off",
                "-qmp", f"unix:{self.ours},server=on,wait=off"]
        for spec, node in memdevs:
            argv += ["-object", spec]
            if node:
                argv += ["-numa", f"node,memdev={spec.split('id=')[1].split(',')[0]}"]
        try:
            self.srv = kit.Server(argv + list(extra), self.mon, timeout=60)
            kit.wait_for_socket(self.srv.proc, str(self.ours), 30)
        except (kit.ServerError, TimeoutError) as e:
            pytest.fail(f"QEMU did not start: {e}")

    @property
    def pid(self):
        return self.srv.pid

    def ranges(self, q):
        """{memdev id: (host address, length)} from QEMU's `info ramblock` (a block is
        named after its backend, or DEVICE/ID for a device's memdev)."""
        out = {}
        text = q("human-monitor-command", **{"command-line": "info ramblock"})
        for row in text.splitlines()[1:]:
            w = row.split()
            if len(w) >= 8 and not w[0].startswith("/") and w[-1] == "rw":
                out[w[0].rsplit("/", 1)[-1]] = (int(w[6], 16), int(w[4], 16))
        return out


class Exporter:
    """`hostmem exporter` on a port the kernel chooses (read from its first line)."""

    def __init__(self, *sockets):
        argv = [hostmem_bin(), "exporter", "--listen", "127.0.0.1:0",
                "--timeout", str(VM_TIMEOUT)]
        for s in sockets:
            argv += ["--qmp", str(s)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"serving (http://\S+)/metrics", line)
        if not m:
            self.close()
            pytest.fail(f"hostmem exporter did not start: {line}{self.proc.stderr.read()}")
        self.url = m[1]
        self.addr = self.url.removeprefix("http://")

    def scrape(self, accept=None):
        return get(f"{self.url}/metrics", accept)[0]

    def close(self):
        kit.end(self.proc)


def kernel_view(pid, start, size):
    """What this test reads itself over [start, start+size): resident bytes (smaps Rss +
    hugetlb), huge bytes (THP + hugetlb) and resident bytes per node from numa_maps
    (pages times the VMA's kernelpagesize_kB)."""
    view = range_view(pid, start, size)
    per_node = {}
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            w = line.split()
            if not start <= int(w[0], 16) < start + size:
                continue
            page = next((int(x.split("=")[1]) * 1024 for x in w
                         if x.startswith("kernelpagesize_kB=")), 4096)
            for x in w[2:]:
                if re.fullmatch(r"N\d+=\d+", x):
                    n, p = x[1:].split("=")
                    per_node[n] = per_node.get(n, 0) + int(p) * page
    huge = view.thp + view.total("Shared_Hugetlb", "Private_Hugetlb")
    return {"resident": view.resident, "huge": huge, "per_node": per_node}


def samples(text):
    """[(name, labels dict, raw '{...}', value)] of a text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)", line)
        assert m, f"unreadable sample line {line!r}"
        raw = m[2] or "{}"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', raw))
        out.append((m[1], labels, raw, float(m[3])))
    return out


def value(text, name, **labels):
    got = [v for n, ls, _, v in samples(text)
           if n == name and all(ls.get(k) == str(x) for k, x in labels.items())]
    return got[0] if len(got) == 1 else got


# ------------------------------------------------------------------- the fixtures

MEMDEVS = [
    ("memory-backend-ram,id=ram0,size=64M,prealloc=on,policy=bind,host-nodes=0", 0),
    ("memory-backend-memfd,id=fd0,size=64M,prealloc=on", 1),
    ("memory-backend-memfd,id=huge0,size=64M,hugetlb=on,hugetlbsize=2M,prealloc=on", 2),
    ("memory-backend-ram,id=vmem0,size=256M,policy=bind,host-nodes=0", None),
]


@pytest.fixture(scope="module")
def vm():
    """One QEMU with three preallocated memdevs (RAM bound to node 0, memfd, 2 MiB
    hugetlb memfd) on three guest nodes and a virtio-mem device asked to plug 128 MiB
    (the guest never runs, so it plugs nothing), and an exporter reading it. The 2 MiB
    pool grows by the 32 pages it needs and shrinks back after."""
    pool = kit.HugePool()
    d = short_dir()
    procs = []
    try:
        pool.grow(32)
        q = Qemu(d, "exp-vm", [(s, n is not None and str(n)) for s, n in MEMDEVS],
                 ["-device", "virtio-mem-pci,id=vm0,memdev=vmem0,node=0,requested-size=0"])
        procs.append(q.srv)
        e = Exporter(q.mon)
        procs.append(e)
        yield q, e
    finally:
        for p in reversed(procs):
            p.close() if isinstance(p, Exporter) else p.kill()
        problems = pool.restore()
        shutil.rmtree(d, ignore_errors=True)
        assert not problems, problems


class Prometheus:
    """A Prometheus of its own: temp config and data dir, a free port, scraping the
    exporter every second."""

    def __init__(self, target):
        self.dir = Path(tempfile.mkdtemp(prefix="hm-prom"))
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "hostmem",
                                      "static_configs": [{"targets": [target]}]}]}
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen(
            [tool(PROMETHEUS), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(self.dir / 'log').read_text()[-2000:]}")
            try:
                return get(f"{self.url}/-/ready", timeout=2)[0] or True
            except OSError as e:
                ready.last = str(e)
                return None
        wait_for(ready, "Prometheus ready", timeout=60, interval=0.2)

    def query(self, q):
        """{labels as a sorted tuple: value} of an instant query now."""
        body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))[0]
        r = json.loads(body)
        assert r["status"] == "success", r
        return {tuple(sorted(x["metric"].items())): float(x["value"][1])
                for x in r["data"]["result"]}

    def close(self):
        kit.end(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------- the tests

def test_prometheus_resident_bytes_per_node_equal_smaps_and_numa_maps(vm):
    q, e = vm
    qmp = Qmp(q.ours)
    qmp("qom-set", path="/machine/peripheral/vm0", property="requested-size",
        value=128 * MIB)
    ranges = q.ranges(qmp)
    assert set(ranges) == {"ram0", "fd0", "huge0", "vmem0"}, ranges
    prom = Prometheus(e.addr)
    try:
        def agree():
            kernel = {m: kernel_view(q.pid, *r) for m, r in ranges.items()}
            want = {(m, n): b for m, k in kernel.items() for n, b in k["per_node"].items()}
            got = prom.query(f'hostmem_memdev_resident_bytes{{pid="{q.pid}"}}')
            got = {(dict(k)["memdev"], dict(k)["node"]): v for k, v in got.items()}
            totals = prom.query(f'hostmem_memdev_resident_total_bytes{{pid="{q.pid}"}}')
            totals = {dict(k)["memdev"]: v for k, v in totals.items()}
            want_totals = {m: k["resident"] for m, k in kernel.items()}
            agree.last = {"prometheus": (got, totals), "kernel": (want, want_totals)}
            return kernel if (got, totals) == (want, want_totals) else None
        kernel = wait_for(agree, "Prometheus's resident bytes per node and in all equal "
                          "to smaps/numa_maps", timeout=60, interval=0.5)
        # Preallocated: every byte of the three is resident, so the figures are not 0.
        for m in ("ram0", "fd0", "huge0"):
            assert kernel[m]["resident"] == 64 * MIB, (m, kernel[m])
        assert kernel["huge0"]["huge"] == 64 * MIB, kernel["huge0"]
        # Small VMs are walked: exact figures, said so beside them.
        err = prom.query(f'hostmem_memdev_placement_error_ratio{{pid="{q.pid}"}}')
        assert {dict(k)["method"] for k in err} == {"walk"} and set(err.values()) == {0.0}, err
        up = prom.query('up{job="hostmem"}')
        assert list(up.values()) == [1.0], f"Prometheus could not read the exposition: {up}"
        share = prom.query('hostmem_memdev_requested_nodes_resident_ratio'
                           f'{{pid="{q.pid}",memdev="ram0"}}')
        on0 = kernel["ram0"]["per_node"].get("0", 0) / kernel["ram0"]["resident"]
        assert list(share.values()) == [on0], share
        plug = prom.query(f'hostmem_virtio_mem_requested_bytes{{pid="{q.pid}"}} - '
                          f'hostmem_virtio_mem_plugged_bytes{{pid="{q.pid}"}}')
        assert list(plug.values()) == [128 * MIB], plug
    finally:
        prom.close()


def test_promtool_check_metrics_accepts_the_exposition(vm):
    _, e = vm
    text = e.scrape()
    r = subprocess.run([tool(PROMTOOL), "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"promtool check metrics: {r.returncode}\n{r.stdout}{r.stderr}")
    assert "hostmem_memdev_resident_bytes{" in text
    om, ctype = get(f"{e.url}/metrics", accept="application/openmetrics-text;version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and om.endswith("# EOF\n"), ctype


def series(picked):
    """promtool input series: each sample held at its value for 40 minutes."""
    return [{"series": f"{n}{raw}", "values": f"{v!r}+0x40"} for n, _, raw, v in picked]


def annotations(name, labels):
    """The annotations the rules file gives alert `name`, its `{{ $labels.X }}` filled
    in (the file's annotations are one double-quoted line each)."""
    text = RULES.read_text().split(f"- alert: {name}\n", 1)[1].split("- alert:", 1)[0]
    out = dict(re.findall(r'^\s+(summary|description): "(.*)"$', text, re.M))
    assert set(out) == {"summary", "description"}, (name, out)
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], v)
            for k, v in out.items()}


def expect(name, *alerts):
    """A promtool alert test at 30 min: exactly `alerts` (label sets) fire."""
    return {"eval_time": "30m", "alertname": name,
            "exp_alerts": [{"exp_labels": a, "exp_annotations": annotations(name, a)}
                           for a in alerts]}


def alert(name, labels, severity):
    return expect(name, *([{**labels, "severity": severity}] if labels is not None else []))


def promtool_test_rules(tmp, tests):
    f = tmp / "hostmem.test.yml"
    f.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                             "tests": tests}, indent=1))  # JSON is YAML
    r = subprocess.run([tool(PROMTOOL), "test", "rules", str(f)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"promtool test rules:\n{r.stdout}{r.stderr}\n{f.read_text()}"
    return r.stdout


def test_promtool_runs_the_shipped_rules_on_a_real_scrape(vm, tmp_path):
    q, e = vm
    qmp = Qmp(q.ours)
    qmp("qom-set", path="/machine/peripheral/vm0", property="requested-size",
        value=128 * MIB)
    ranges = q.ranges(qmp)
    pid = str(q.pid)

    def scrape_agrees():
        """A scrape whose resident, huge and per-node figures are the kernel's (read by
        this test just after it), with that kernel reading."""
        text = e.scrape()
        kernel = {m: kernel_view(q.pid, *r) for m, r in ranges.items()}
        got = {m: (value(text, "hostmem_memdev_resident_total_bytes", pid=pid, memdev=m),
                   value(text, "hostmem_memdev_thp_bytes", pid=pid, memdev=m)
                   + value(text, "hostmem_memdev_hugetlb_bytes", pid=pid, memdev=m))
               for m in ranges}
        want = {m: (k["resident"], k["huge"]) for m, k in kernel.items()}
        scrape_agrees.last = (got, want)
        return (text, kernel) if got == want else None
    text, kernel = wait_for(scrape_agrees, "a scrape agreeing with smaps", timeout=30,
                            interval=0.2)
    mine = [s for s in samples(text) if s[0].startswith("hostmem_")
            and s[1].get("pid", pid) == pid and not s[1].get("source", "").endswith(".qmp")
            or s[0] in ("hostmem_scrape_source_up", "hostmem_scrape_source_errors_total")
            and s[1].get("source") == str(q.mon)]
    vm_labels = {"domain": "exp-vm", "pid": pid}

    # The real scrape. Expected from the kernel's view, read by this test: no memdev
    # with host-nodes has more than 10 % off them; a memdev the host allows THP for
    # (sysfs modes, by its kind) with under half of its resident memory in huge pages
    # fires; node 0 can give the 128 MiB plug.
    def off_requested(m):
        nodes = re.search(r"host-nodes=([\d,]+)", dict(MEMDEVS_BY_ID)[m])
        k = kernel[m]
        if not nodes or not k["resident"]:
            return False
        on = sum(k["per_node"].get(n, 0) for n in nodes[1].split(","))
        return 1 - on / k["resident"] > 0.10
    def huge_short(m, k):
        return (THP_ALLOWED[KIND[m]]() and k["resident"] > 0
                and k["huge"] / k["resident"] < 0.5)
    short_now = sorted(m for m, k in kernel.items() if huge_short(m, k))
    assert not any(off_requested(m) for m in kernel), kernel
    with open("/sys/devices/system/node/node0/meminfo") as f:
        free0 = int(re.search(r"MemFree:\s+(\d+) kB", f.read())[1]) * 1024
    assert free0 > 128 * MIB, f"node 0 has only {free0} bytes free: the case is moot"
    real = {"name": "the real scrape", "interval": "1m", "input_series": series(mine),
            "alert_rule_test": [alert("HostmemMemoryOffRequestedNodes", None, ""),
                                alert("HostmemNodeCannotGiveNextPlug", None, ""),
                                alert("HostmemSourceDown", None, "")]}
    hp = expect("HostmemHugePagesNotResident",
                *({**vm_labels, "memdev": m, "severity": "info"} for m in short_now))
    real["alert_rule_test"].append(hp)

    # Misplaced (constructed, see the module doc): ram0's real series with its
    # requested node relabelled 0 -> 1 and the share recomputed from its real bytes
    # per node on node 1.
    share1 = kernel["ram0"]["per_node"].get("1", 0) / kernel["ram0"]["resident"]
    moved = []
    for n, ls, raw, v in mine:
        if ls.get("memdev") != "ram0":
            continue
        if n == "hostmem_memdev_requested_node":
            raw = raw.replace('node="0"', 'node="1"')
        if n == "hostmem_memdev_requested_nodes_resident_ratio":
            v = share1
        moved.append((n, ls, raw, v))
    misplaced = {"name": "ram0 requested on node 1 (constructed from the real scrape)",
                 "interval": "1m", "input_series": series(moved),
                 "alert_rule_test": [alert("HostmemMemoryOffRequestedNodes",
                                           {**vm_labels, "memdev": "ram0"}, "warning")]}

    # Node 0 short of the pending plug (constructed): the real series with node 0's
    # available figure at 64 MiB, under the 128 MiB the virtio-mem device still needs.
    short = [(n, ls, raw, 64.0 * MIB if n == "hostmem_node_available_bytes"
              and ls.get("node") == "0" else v) for n, ls, raw, v in mine]
    plug = {"name": "node 0 cannot give the next plug (constructed from the real scrape)",
            "interval": "1m", "input_series": series(short),
            "alert_rule_test": [alert("HostmemNodeCannotGiveNextPlug",
                                      {**vm_labels, "memdev": "vmem0", "device": "vm0",
                                       "guest_node": "0", "node": "0"}, "critical")]}
    # Small pages only (constructed): ram0's real series, its THP bytes at 0; fires
    # when the host allows THP for anonymous memory, as the kernel's sysfs says.
    small = [(n, ls, raw, 0.0 if n == "hostmem_memdev_thp_bytes" else v)
             for n, ls, raw, v in mine
             if ls.get("memdev") == "ram0" or n == "hostmem_thp_mode"]
    no_thp = {"name": "ram0 without THP (constructed from the real scrape)",
              "interval": "1m", "input_series": series(small),
              "alert_rule_test": [expect(
                  "HostmemHugePagesNotResident",
                  *([{**vm_labels, "memdev": "ram0", "severity": "info"}]
                    if huge_short("ram0", {**kernel["ram0"], "huge": 0}) else []))]}
    out = promtool_test_rules(tmp_path, [real, misplaced, plug, no_thp])
    assert "SUCCESS" in out, out


MEMDEVS_BY_ID = [(s.split("id=")[1].split(",")[0], s) for s, _ in MEMDEVS]
# The kind of memory of each memdev of MEMDEVS: private anonymous (ram, share=off) or
# shmem (memfd; its hugetlb one never has THP, its pages being huge already).
KIND = {"ram0": "anon", "fd0": "shmem", "huge0": "shmem", "vmem0": "anon"}


def thp_mode(name):
    """The host's THP mode in /sys/kernel/mm/transparent_hugepage/NAME (the [one])."""
    text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text()
    return re.search(r"\[(\w+)\]", text)[1]


THP_ALLOWED = {"anon": lambda: thp_mode("enabled") in ("always", "madvise"),
               "shmem": lambda: thp_mode("shmem_enabled") in
               ("always", "within_size", "advise", "force")}


def test_a_stopped_or_killed_qemu_is_down_within_the_timeout_others_served():
    d = short_dir()
    spec = [("memory-backend-ram,id=m,size=32M,prealloc=on", "0")]
    a = b = e = None
    scrapes, inflight, stop = [], threading.Event(), threading.Event()

    def loop():
        while not stop.is_set():
            t0 = time.monotonic()
            inflight.set()
            try:
                text = e.scrape()
            except Exception as x:  # a failed scrape is a finding, kept
                text = x
            inflight.clear()
            scrapes.append((t0, time.monotonic(), text))

    th = threading.Thread(target=loop)
    try:
        a = Qemu(d, "exp-a", spec)
        b = Qemu(d, "exp-b", spec)
        qa = Qmp(a.ours)
        start, size = a.ranges(qa)["m"]
        assert kernel_view(a.pid, start, size)["per_node"] == {"0": 32 * MIB}
        e = Exporter(a.mon, b.mon)
        th.start()

        def up_of(sock, since, want):
            def probe():
                for t0, _, text in scrapes[since:]:
                    if isinstance(text, str) and t0 > since_t and value(
                            text, "hostmem_scrape_source_up", source=str(sock)) == want:
                        return text
                probe.last = scrapes[-1][2] if scrapes else None
                return None
            since_t = time.monotonic() if since else 0
            return wait_for(probe, f"{sock} up={want} in a scrape", timeout=20,
                            interval=0.01)
        up_of(b.mon, 0, 1.0)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            n = len(scrapes)
            assert inflight.wait(10), "no scrape in flight"
            t_sig = time.monotonic()
            os.kill(b.pid, sig)
            up_of(b.mon, n, 0.0)
            after = scrapes[max(n - 1, 0):]
            assert any(t0 < t_sig < t1 for t0, t1, _ in after), (
                f"{sig.name} did not land during a scrape")
            for t0, t1, text in after:
                assert isinstance(text, str), f"a scrape failed after {sig.name}: {text}"
                assert t1 - t0 < VM_TIMEOUT + 1.0, (
                    f"a scrape took {t1 - t0:.2f} s after {sig.name} (timeout {VM_TIMEOUT} s)")
                assert value(text, "hostmem_scrape_source_up", source=str(a.mon)) == 1.0
                assert value(text, "hostmem_memdev_resident_bytes", pid=a.pid, memdev="m",
                             node=0) == 32 * MIB, "the VM that answers is still served"
            print(f"after {sig.name}: {len(after)} scrapes, longest "
                  f"{max(t1 - t0 for t0, t1, _ in after):.3f} s")
            if sig == signal.SIGSTOP:
                os.kill(b.pid, signal.SIGCONT)
                up_of(b.mon, len(scrapes), 1.0)
    finally:
        stop.set()
        if th.is_alive():
            th.join(30)
        for p in (e, b, a):
            if isinstance(p, Exporter):
                p.close()
            elif p is not None:
                os.kill(p.pid, signal.SIGCONT) if p.srv.proc.poll() is None else None
                p.srv.kill()
        shutil.rmtree(d, ignore_errors=True)
