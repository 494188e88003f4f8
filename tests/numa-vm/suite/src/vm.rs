//! `hostmem vm` against a QEMU 10 running inside the guest (run.sh copies it in with
//! its libraries and firmware): backends bound to node 0 and preallocated, then
//! `hostmem vm rebind` of one to node 2 and another to nodes 1,2. Every check reads
//! QEMU's /proc/PID/numa_maps over the ranges QEMU's own `info ramblock` gives, asked
//! on a second QMP monitor of the test's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostmem_testkit as testkit;
use testkit::qemu::{qmp_arg, stopped_pc, Qemu};
use testkit::qmp::Qmp;
use testkit::spawn::command;

use crate::common::*;

pub(crate) const HOSTMEM_QMP: &str = "/tmp/vm-hostmem.qmp";
const TEST_QMP: &str = "/tmp/vm-test.qmp";

/// Starts QEMU with `backends` (id, MiB), each bound to node 0 and preallocated;
/// killed on drop.
pub(crate) fn start(backends: &[(&str, u64)]) -> Result<Qemu, String> {
    let total: u64 = backends.iter().map(|b| b.1).sum();
    let mut cmd = stopped_pc("/bin/qemu-system-x86_64", total);
    let sockets = [PathBuf::from(HOSTMEM_QMP), PathBuf::from(TEST_QMP)];
    for s in &sockets {
        cmd.arg("-qmp").arg(qmp_arg(s));
    }
    for (id, mib) in backends {
        cmd.arg("-object").arg(format!(
            "memory-backend-ram,id={id},size={mib}M,policy=bind,host-nodes=0,prealloc=on"
        ));
        cmd.arg("-numa").arg(format!("node,memdev={id}"));
    }
    Qemu::spawn(cmd, &sockets, Duration::from_secs(60))
}

/// (name, host address, length) of each named RAM block, from `info ramblock` on the
/// test's own QMP monitor.
pub(crate) fn ramblocks() -> Result<Vec<(String, u64, u64)>, String> {
    let mut q = Qmp::connect(Path::new(TEST_QMP), Duration::from_secs(60))?;
    Ok(testkit::qmp::ramblocks(&mut q)?
        .into_iter()
        .filter(|b| !b.name.is_empty())
        .map(|b| (b.name, b.hva, b.used))
        .collect())
}

/// Pages per node over [addr, addr+len) of QEMU's numa_maps.
pub(crate) fn pages(pid: u32, addr: u64, len: u64) -> Result<BTreeMap<u32, u64>, String> {
    let numa = std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))
        .map_err(|e| format!("numa_maps: {e}"))?;
    let mut out = BTreeMap::new();
    for l in numa.lines() {
        let mut w = l.split_whitespace();
        let a = w
            .next()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .unwrap_or(0);
        if a < addr || a >= addr + len {
            continue;
        }
        for word in w {
            if let Some((n, p)) = word.strip_prefix('N').and_then(|r| r.split_once('=')) {
                if let (Ok(n), Ok(p)) = (n.parse::<u32>(), p.parse::<u64>()) {
                    *out.entry(n).or_default() += p;
                }
            }
        }
    }
    Ok(out)
}

fn all_pages(pid: u32, blocks: &[(String, u64, u64)]) -> Result<Vec<BTreeMap<u32, u64>>, String> {
    blocks.iter().map(|b| pages(pid, b.1, b.2)).collect()
}

/// `hostmem vm` on the guest QEMU's second monitor, a minute at most per request;
/// `args` follow the common options.
fn hostmem_vm(args: &[&str]) -> Command {
    let mut c = command(
        "/bin/hostmem",
        &["vm", "--qmp", HOSTMEM_QMP, "--timeout", "60"],
    );
    c.args(args);
    c
}

pub(crate) fn rebind(
    id: &str,
    nodes: &str,
) -> Result<(std::process::ExitStatus, String, String), String> {
    let out = hostmem_vm(&["--json", "rebind", id, nodes])
        .output()
        .map_err(|e| format!("hostmem: {e}"))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A number field of hostmem's flat rebind JSON.
fn field(json: &str, key: &str) -> f64 {
    json.split(&format!("\"{key}\":"))
        .nth(1)
        .map(|v| {
            v.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
                .collect::<String>()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn share(p: &BTreeMap<u32, u64>, nodes: &[u32]) -> f64 {
    let total: u64 = p.values().sum();
    let on: u64 = nodes.iter().filter_map(|n| p.get(n)).sum();
    on as f64 / total.max(1) as f64
}

pub fn vm_rebind_backends(t: &Topo) -> Check {
    let none = *t.cpu_only.first().ok_or("no memoryless node")?;
    let qemu = start(&[("a", 64), ("b", 96), ("c", 32)])?;
    let pid = qemu.pid();
    let mut blocks = ramblocks()?;
    blocks.retain(|b| ["a", "b", "c"].contains(&b.0.as_str()));
    blocks.sort();
    ensure(blocks.len() == 3, || format!("ram blocks {blocks:?}"))?;
    let before = all_pages(pid, &blocks)?;
    for (b, p) in blocks.iter().zip(&before) {
        ensure(
            share(p, &[0]) == 1.0 && p.values().sum::<u64>() * 4096 == b.2,
            || format!("{} not all on node 0 before: {}", b.0, dist(p)),
        )?;
    }

    // A memory-less node, or a node missing from a list with good ones, is refused
    // before any page moves (a one-node host cannot tell: nothing could move there).
    for (nodes, why) in [
        (none.to_string(), format!("node {none} has no memory")),
        ("2,9".to_string(), "node 9 does not exist".to_string()),
    ] {
        let (st, _, err) = rebind("a", &nodes)?;
        ensure(st.code() == Some(1), || {
            format!("rebind to nodes {nodes}: {st} {err}")
        })?;
        ensure(
            err.contains(&format!("refused before moving any page: {why}")),
            || format!("refusal of {nodes} said: {err}"),
        )?;
        ensure(all_pages(pid, &blocks)? == before, || {
            format!("pages moved on the refusal of nodes {nodes}")
        })?;
    }

    // a → node 2.
    let (st, out_a, err) = rebind("a", "2")?;
    ensure(st.success(), || format!("rebind a 2: {st} {err}"))?;
    let now = all_pages(pid, &blocks)?;
    ensure(share(&now[0], &[2]) >= 0.99, || {
        format!("a after: {}", dist(&now[0]))
    })?;
    ensure(now[1] == before[1] && now[2] == before[2], || {
        format!("b, c touched: {} / {}", dist(&now[1]), dist(&now[2]))
    })?;

    // b → nodes 1,2, interleaved.
    let (st, out_b, err) = rebind("b", "1,2")?;
    ensure(st.success(), || format!("rebind b 1,2: {st} {err}"))?;
    let after = all_pages(pid, &blocks)?;
    let b = &after[1];
    let half = share(b, &[1]);
    ensure(
        share(b, &[1, 2]) >= 0.99 && (0.4..=0.6).contains(&half),
        || format!("b after: {}", dist(b)),
    )?;
    ensure(after[0] == now[0] && after[2] == before[2], || {
        format!("a, c touched: {} / {}", dist(&after[0]), dist(&after[2]))
    })?;
    ensure(
        out_b.contains("\"policy-after\":\"bind:0\"")
            && out_b.contains("warnings\":[\"the range's own policy"),
        || format!("no warning that later faults still go to node 0: {out_b}"),
    )?;
    Ok(format!(
        "a 64M→2: {} ({:.3} s, {:.2} GiB/s); b 96M→1,2: {} ({:.3} s, {:.2} GiB/s); c {}; node {none} and 2,9 refused",
        dist(&after[0]),
        field(&out_a, "seconds"),
        field(&out_a, "gib-per-sec"),
        dist(b),
        field(&out_b, "seconds"),
        field(&out_b, "gib-per-sec"),
        dist(&after[2]),
    ))
}

pub fn vm_qemu_killed_mid_rebind(_t: &Topo) -> Check {
    let mut qemu = start(&[("big", 192)])?;
    let pid = qemu.pid();
    let (_, addr, len) = ramblocks()?
        .into_iter()
        .find(|b| b.0 == "big")
        .ok_or("no ram block big")?;
    let mut h = hostmem_vm(&["rebind", "big", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("hostmem: {e}"))?;
    // Kill QEMU as soon as the first pages have reached node 1.
    let t = Instant::now();
    loop {
        let p = pages(pid, addr, len)?;
        if p.get(&1).copied().unwrap_or(0) > 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err("no page reached node 1 in 60 s".into());
        }
    }
    let seen = share(&pages(pid, addr, len)?, &[1]);
    qemu.kill();
    let status = h.wait().map_err(|e| e.to_string())?;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut h.stderr.take().ok_or("no stderr")?, &mut err)
        .map_err(|e| e.to_string())?;
    ensure(seen < 1.0, || {
        format!(
            "the move finished before QEMU could be killed ({:.0} % on node 1)",
            seen * 100.0
        )
    })?;
    ensure(status.code() == Some(1), || {
        format!("hostmem exited {status}: {err}")
    })?;
    ensure(err.contains("exited") && !err.contains("panicked"), || {
        format!("stderr: {err}")
    })?;
    Ok(format!(
        "killed at {:.0} % moved; {}",
        seen * 100.0,
        err.trim()
    ))
}
