//! Per-node huge page pools: a node without pages is named, by the run and by --check.

use std::process::Command;

use hostmem::{Backend, Kind, Policy};

use crate::common::*;

/// Enough huge pages host-wide (8 on one node), none on the bound node: the error
/// names the node, which only the per-node check can do.
pub fn empty_pool_named(t: &Topo) -> Check {
    let (full, empty) = (t.mem[0], t.mem[1]);
    with_node_pools(&[(full, 8), (empty, 0)], 4, || {
        empty_pool_named_now(full, empty)
    })
}

pub fn empty_pool_named_now(full: u32, empty: u32) -> Check {
    let mk = |n: u32| {
        Backend::builder(Kind::Memfd, "hp")
            .size(8 * MIB)
            .hugetlb(true)
            .prealloc(true)
            .policy(Policy::Bind)
            .host_nodes(nodes(&n.to_string()))
            .create()
    };
    let ok = mk(full).map_err(|e| format!("node {full} has 8 pages, yet: {e}"))?;
    let p = placement(&ok)?;
    ensure(p.keys().all(|&k| k == full), || {
        format!("huge pages off node {full}: {}", dist(&p))
    })?;
    drop(ok);
    let e = mk(empty)
        .err()
        .ok_or("bind to a node with an empty pool succeeded")?
        .to_string();
    ensure(
        e.contains(&format!("on the bound nodes (node {empty}: 0 free)")),
        || format!("message: {e}"),
    )?;
    Ok(e)
}

/// Huge page pools that are uneven across nodes: enough pages in total, none on the
/// node the backend is bound to. `--check` names the node; the real run of the same
/// line then fails with the same words.
pub fn check_names_an_empty_node_pool_like_the_run(t: &Topo) -> Check {
    let (full, empty) = (t.mem[0], t.mem[1]);
    with_node_pools(&[(full, 8), (empty, 0)], 8, || check_names_now(empty))
}

pub fn check_names_now(empty: u32) -> Check {
    let args = [
        "qemu-system-x86_64".to_string(),
        "-m".into(),
        "16M".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=hp,size=16M,hugetlb=on,prealloc=on,policy=bind,host-nodes={empty}"),
        "-numa".into(),
        "node,memdev=hp".into(),
    ];
    let go = |check: bool| {
        Command::new("/bin/hostmem")
            .arg("run")
            .args(check.then_some("--check"))
            .arg("--")
            .args(&args)
            .output()
            .map_err(|e| format!("starting /bin/hostmem: {e}"))
    };
    let (check, real) = (go(true)?, go(false)?);
    let reason = format!("node {empty}: 0 free");
    let (ce, re) = (
        String::from_utf8_lossy(&check.stderr).to_string(),
        String::from_utf8_lossy(&real.stderr).to_string(),
    );
    ensure(!check.status.success() && ce.contains(&reason), || {
        format!("--check did not name node {empty}: {ce}")
    })?;
    ensure(!real.status.success() && re.contains(&reason), || {
        format!("the run did not fail the same way: {re}")
    })?;
    Ok(format!(
        "--check and run both: {}",
        re.trim()
            .lines()
            .last()
            .unwrap_or("")
            .rsplit("hp': ")
            .next()
            .unwrap_or("")
    ))
}
