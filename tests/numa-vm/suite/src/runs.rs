//! `hostmem run` as a separate process: its report against the kernel's numa_maps.

use std::process::Command;

use crate::common::*;

pub fn run_two_backends(t: &Topo) -> Check {
    let (a, b) = (t.mem[1], t.mem[2]);
    let (line, numa) = held_run(&[
        "-object",
        &format!("memory-backend-ram,id=a,size=48M,prealloc=on,policy=bind,host-nodes={a}"),
        "-object",
        &format!("memory-backend-ram,id=b,size=32M,prealloc=on,policy=bind,host-nodes={b}"),
    ])?;
    let mut out = Vec::new();
    for (id, node) in [("a", a), ("b", b)] {
        let reported = extract_pages(&line, id)?;
        let addr = extract_addr(&line, id)?;
        let kernel = numa_maps_pages(&numa, addr)?;
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
    let mut held = vec!["--".to_string()];
    held.extend(args.iter().cloned());
    let (line, numa) = held_run(&held)?;
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
