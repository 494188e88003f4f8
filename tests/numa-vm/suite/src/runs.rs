//! `hostmem run` as a separate process: its report against the kernel's numa_maps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

pub fn run_two_backends(t: &Topo) -> Check {
    let (a, b) = (t.mem[1], t.mem[2]);
    let mut child = Command::new("/bin/hostmem")
        .args(["run", "--json", "--hold"])
        .args([
            "-object",
            &format!("memory-backend-ram,id=a,size=48M,prealloc=on,policy=bind,host-nodes={a}"),
        ])
        .args([
            "-object",
            &format!("memory-backend-ram,id=b,size=32M,prealloc=on,policy=bind,host-nodes={b}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", child.id()))
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    ensure(status.success(), || format!("hostmem run exited {status}"))?;
    let mut out = Vec::new();
    for (id, node) in [("a", a), ("b", b)] {
        let reported = extract_pages(&line, id)?;
        let addr = extract_addr(&line, id)?;
        let kernel: BTreeMap<u32, u64> = numa
            .lines()
            .find(|l| l.starts_with(&format!("{addr:x} ")))
            .ok_or_else(|| format!("no numa_maps line at {addr:x}"))?
            .split_whitespace()
            .filter_map(|w| {
                let (n, p) = w.strip_prefix('N')?.split_once('=')?;
                Some((n.parse().ok()?, p.parse().ok()?))
            })
            .collect();
        ensure(reported == kernel, || {
            format!(
                "{id}: report {} vs numa_maps {}",
                dist(&reported),
                dist(&kernel)
            )
        })?;
        let want = if id == "a" { 48 * MIB } else { 32 * MIB } / 4096;
        ensure(
            kernel.keys().all(|&k| k == node) && kernel.values().sum::<u64>() == want,
            || {
                format!(
                    "{id}: want {want} pages on node {node}, numa_maps {}",
                    dist(&kernel)
                )
            },
        )?;
        out.push(format!("{id}@{node}: {}", dist(&kernel)));
    }
    Ok(out.join("; "))
}

/// A 4-node VM's QEMU command line (libvirt-style JSON backends, one bound to each
/// memory node, `-numa node,memdev=`): `--check` says every backend fits, and the real
/// run puts each backend's pages on its node, as numa_maps of that process shows.
pub fn qemu_cmdline_checked_then_run(t: &Topo) -> Check {
    let nodes = t.mem.get(..4).ok_or("need 4 memory nodes")?;
    let mut args: Vec<String> = ["qemu-system-x86_64", "-m", "128M", "-nodefaults", "-S"]
        .map(String::from)
        .to_vec();
    for (i, n) in nodes.iter().enumerate() {
        args.push("-object".into());
        args.push(format!(
            r#"{{"qom-type":"memory-backend-ram","id":"ram-node{i}","size":33554432,"prealloc":true,"policy":"bind","host-nodes":[{n}]}}"#
        ));
        args.push("-numa".into());
        args.push(format!("node,nodeid={i},memdev=ram-node{i}"));
    }
    let check = Command::new("/bin/hostmem")
        .args(["run", "--check", "--"])
        .args(&args)
        .output()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let text = String::from_utf8_lossy(&check.stdout);
    ensure(
        check.status.success() && text.matches(" fits").count() == 4,
        || format!("--check: {}\n{text}", check.status),
    )?;
    let mut child = Command::new("/bin/hostmem")
        .args(["run", "--json", "--hold", "--"])
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", child.id()))
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    ensure(status.success(), || format!("hostmem run exited {status}"))?;
    let mut out = Vec::new();
    for (i, &node) in nodes.iter().enumerate() {
        let id = format!("ram-node{i}");
        let addr = extract_addr(&line, &id)?;
        let kernel = numa_maps_pages(&numa, addr)?;
        ensure(
            kernel.keys().all(|&k| k == node) && kernel.values().sum::<u64>() == 8192,
            || format!("{id}: predicted node {node}, numa_maps {}", dist(&kernel)),
        )?;
        out.push(format!("{id}@{node}: {}", dist(&kernel)));
    }
    Ok(format!("--check: 4 fit; run: {}", out.join("; ")))
}
