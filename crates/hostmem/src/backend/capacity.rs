//! Huge page accounting: whether the pools (host-wide, and per node for `bind`) can give
//! a backend its pages, asked before mapping so a shortage is an error naming the page
//! size, the pages needed and free, and the nodes, never a SIGBUS or a half-made object.

use std::collections::BTreeMap;

use super::Backend;
use crate::error::{Error, Result, Shortage};
use crate::kind::Plan;
use crate::numa::{HostTopology, HugePool};

/// Names a huge page shortage before mapping: host-wide for the reservation, and
/// per bound node when the pages must come from there.
pub(super) fn check_huge_pages(
    b: &Backend,
    needed: u64,
    page_size: u64,
    host: &HostTopology,
) -> Result<()> {
    let c = &b.cfg.common;
    if !c.reserve && !c.prealloc {
        return Ok(());
    }
    check_pool(b, needed, page_size, host, c.prealloc)
}

/// Refuses when the pool (and, for a strict policy when `faulting`, the bound nodes'
/// pools) cannot give `needed` pages.
pub(crate) fn check_pool(
    b: &Backend,
    needed: u64,
    page_size: u64,
    host: &HostTopology,
    faulting: bool,
) -> Result<()> {
    let available = HugePool::read(page_size, None).map_or(0, |p| p.available());
    if available < needed {
        return Err(shortage(b, needed, page_size, available, Vec::new()));
    }
    if faulting && b.cfg.common.policy.is_strict() {
        let per_node = bound_pools(b, host, page_size);
        let free: u64 = per_node.iter().map(|(_, f)| f).sum();
        if free < needed {
            return Err(shortage(b, needed, page_size, free, per_node));
        }
    }
    Ok(())
}

/// The shortage as the pools are now (after a failed prealloc gave its pages back).
pub(super) fn shortage_now(b: &Backend, needed: u64, page_size: u64) -> Error {
    if b.cfg.common.policy.is_strict() {
        // Read again: the error must show the pools as they are after the failure.
        let nodes = bound_pools(b, &HostTopology::read(), page_size);
        let free = nodes.iter().map(|(_, f)| f).sum();
        return shortage(b, needed, page_size, free, nodes);
    }
    let free = HugePool::read(page_size, None).map_or(0, |p| p.available());
    shortage(b, needed, page_size, free, Vec::new())
}

fn shortage(b: &Backend, needed: u64, page_size: u64, free: u64, nodes: Vec<(u32, u64)>) -> Error {
    Error::HugePagesShort {
        kind: b.kind().qom_type(),
        id: b.id.clone(),
        shortage: Shortage {
            page_size,
            needed,
            free,
            nodes,
            with: Vec::new(),
        },
    }
}

/// The backends of a batch summed per huge page size against the host-wide pools, in
/// order: each backend that would find the pool empty after the ones before it gets
/// an error naming them (its index in `items`). Each one alone was checked already.
pub(crate) fn check_batch(items: &[(&Backend, &Plan)]) -> Vec<(usize, Error)> {
    let mut taken: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    let mut short = Vec::new();
    for (i, (b, plan)) in items.iter().enumerate() {
        let c = &b.cfg.common;
        if !plan.hugetlb || plan.existing_file || !(c.reserve || c.prealloc) {
            continue;
        }
        let page = plan.page_size;
        let needed = plan.len / page;
        let (before, ids) = taken.entry(page).or_default();
        if !ids.is_empty() {
            let free = HugePool::read(page, None).map_or(0, |p| p.available());
            if *before + needed > free {
                let mut e = shortage(b, *before + needed, page, free, Vec::new());
                if let Error::HugePagesShort { shortage, .. } = &mut e {
                    shortage.with = ids.clone();
                }
                short.push((i, e));
            }
        }
        *before += needed;
        ids.push(b.id.clone());
    }
    short
}

/// Free huge pages of `page_size` on each node of `host-nodes`.
fn bound_pools(b: &Backend, host: &HostTopology, page_size: u64) -> Vec<(u32, u64)> {
    let free = |n| {
        host.node(n)
            .and_then(|i| i.pool(page_size))
            .map_or(0, |p| p.free)
    };
    b.cfg
        .common
        .host_nodes
        .iter()
        .map(|n| (n, free(n)))
        .collect()
}
