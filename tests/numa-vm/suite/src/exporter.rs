//! `hostmem exporter` in the NUMA guest (issue 23): a QEMU backend bound to node 0 and
//! moved to node 2 with `hostmem vm rebind` shows the moved share in the exporter's
//! output. The figures are compared with QEMU's /proc/PID/numa_maps over the range
//! QEMU's own `info ramblock` gives (vm.rs's helpers), never with hostmem's answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hostmem_testkit::spawn::command;

use crate::common::*;
use crate::vm::{pages, ramblocks, rebind, start, HOSTMEM_QMP};

/// The exporter, killed on drop.
struct Exporter {
    child: Child,
    addr: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    /// Starts `hostmem exporter` on a loopback port the kernel picks (read from its
    /// first line on stderr).
    fn start() -> Result<Exporter, String> {
        // The guest's init leaves the loopback interface down.
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map_err(|e| format!("ip link set lo up: {e}"))?;
        ensure(lo.success(), || format!("ip link set lo up: {lo}"))?;
        let args = ["exporter", "--listen", "127.0.0.1:0", "--qmp", HOSTMEM_QMP];
        let mut child = command("/bin/hostmem", &args)
            .args(["--timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hostmem exporter: {e}"))?;
        let mut line = String::new();
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let read = BufReader::new(stderr).read_line(&mut line);
        let addr = line
            .split("serving http://")
            .nth(1)
            .and_then(|r| r.strip_suffix("/metrics\n"))
            .map(str::to_string);
        let mut e = Exporter {
            child,
            addr: String::new(),
        };
        e.addr =
            addr.ok_or_else(|| format!("hostmem exporter did not start: {read:?} {line:?}"))?;
        Ok(e)
    }

    /// One scrape's body (text format 0.0.4: no Accept header).
    fn scrape(&self) -> Result<String, String> {
        let mut s = TcpStream::connect(&self.addr).map_err(|e| format!("{}: {e}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: guest\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut r = String::new();
        s.read_to_string(&mut r)
            .map_err(|e| format!("reading the scrape: {e}"))?;
        let (head, body) = r.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        ensure(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            || format!("scrape answered {head}"),
        )?;
        Ok(body.to_string())
    }
}

/// The value of the one sample of `name` whose labels include each of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Result<f64, String> {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    match found[..] {
        [v] => Ok(v),
        _ => Err(format!("{name} {labels:?}: {found:?} in the scrape")),
    }
}

pub fn exporter_shows_the_moved_share(_t: &Topo) -> Check {
    let qemu = start(&[("a", 64)])?;
    let pid = qemu.pid();
    let (_, addr, len) = ramblocks()?
        .into_iter()
        .find(|b| b.0 == "a")
        .ok_or("no ram block a")?;
    let e = Exporter::start()?;
    let ratio = "hostmem_memdev_requested_nodes_resident_ratio";
    let resident = "hostmem_memdev_resident_bytes";
    let a = "memdev=\"a\"";

    let before = pages(pid, addr, len)?;
    let text = e.scrape()?;
    ensure(before.keys().eq([&0]), || {
        format!("a before: {}", dist(&before))
    })?;
    let share0 = sample(&text, ratio, &[a])?;
    ensure(share0 == 1.0, || {
        format!("exporter share before the move: {share0}")
    })?;

    let (st, _, err) = rebind("a", "2")?;
    ensure(st.success(), || format!("rebind a 2: {st} {err}"))?;
    let after = pages(pid, addr, len)?;
    let text = e.scrape()?;
    let total: u64 = after.values().sum();
    let on0 = after.get(&0).copied().unwrap_or(0) as f64 / total.max(1) as f64;
    ensure(on0 <= 0.01, || {
        format!("a after the move: {}", dist(&after))
    })?;
    let share = sample(&text, ratio, &[a])?;
    ensure(share == on0, || {
        format!(
            "exporter share on node 0 {share}, numa_maps {on0} ({})",
            dist(&after)
        )
    })?;
    for (n, p) in &after {
        let got = sample(&text, resident, &[a, &format!("node=\"{n}\"")])?;
        ensure(got == (p * 4096) as f64, || {
            format!("node {n}: exporter {got} bytes, numa_maps {p} pages")
        })?;
    }
    Ok(format!(
        "a 64M bound to 0, moved to 2: {}; exporter share on the requested node {share:.3} (numa_maps {on0:.3})",
        dist(&after)
    ))
}
