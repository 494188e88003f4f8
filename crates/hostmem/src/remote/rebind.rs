//! Moving the resident pages of another process's range to other nodes (move_pages(2)
//! with the process's id), in chunks, with progress and cancel.
//!
//! Everything that can be refused is refused before the first page moves: no nodes, a
//! node that cannot hold memory, a node whose free memory (or huge page pool) is
//! smaller than its share. Pages are assigned to the targets by address, round-robin
//! in stripes (one page, or 2 MiB where the range holds transparent huge pages so a
//! huge page is not torn between nodes), like MPOL_INTERLEAVE would place them; a page
//! already on its node stays.
//!
//! What the move does not change: the range's own memory policy (numa_maps' policy
//! field) decides where pages faulted *later* go. The report carries that policy and a
//! warning when it points elsewhere than the targets.
//!
//! MPOL_MF_MOVE (the default) moves only pages mapped by this process alone; a page
//! mapped by several processes (a memfd or file also mapped by a vhost-user back end,
//! a page shared after fork) comes back EACCES and stays. `move_all` passes
//! MPOL_MF_MOVE_ALL, which moves them too and needs CAP_SYS_NICE.

use std::collections::BTreeMap;
use std::time::Instant;

use super::error::{self, RemoteError};
use super::{RemoteRegion, PAGES_PER_CALL};
use crate::numa::{HostTopology, KernelMode, NodeSet};
use crate::prealloc::Progress;

/// How to move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebindOptions {
    /// MPOL_MF_MOVE_ALL: also move pages other processes map (needs CAP_SYS_NICE).
    pub move_all: bool,
}

/// What a move did, page by page, as the kernel reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteRebindReport {
    /// Bytes per page the range was moved in (the kernel's page size of the mapping).
    pub page_size: u64,
    /// Resident pages of the range when the move started.
    pub resident_pages: u64,
    /// Resident pages that were already on their target node.
    pub already_placed: u64,
    /// Pages the kernel moved (checked after the move: on their target node now).
    pub moved: u64,
    /// Pages that stayed where they were, by the errno move_pages gave them.
    pub failed: BTreeMap<i32, u64>,
    /// Pages not tried because the move was cancelled.
    pub skipped: u64,
    /// The move was cancelled (Progress::cancel) before it finished.
    pub cancelled: bool,
    /// Wall time of the move itself, seconds.
    pub seconds: f64,
    /// Pages per target node moved there.
    pub moved_per_node: BTreeMap<u32, u64>,
    /// The range's policy from numa_maps after the move: what pages faulted later get.
    pub policy_after: String,
    /// Things the caller should know: a policy that sends later faults elsewhere.
    pub warnings: Vec<String>,
}

impl RemoteRebindReport {
    /// Bytes moved.
    pub fn bytes_moved(&self) -> u64 {
        self.moved * self.page_size
    }

    /// Pages that failed, all reasons.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Bytes moved per second, in GiB/s (0 when nothing moved).
    pub fn gib_per_sec(&self) -> f64 {
        if self.seconds <= 0.0 || self.moved == 0 {
            return 0.0;
        }
        self.bytes_moved() as f64 / self.seconds / f64::from(1u32 << 30)
    }
}

/// Bytes `node` can still take, as a move's capacity check sees them: what the
/// memory limits say is available there (free plus what the kernel reclaims without
/// swapping, less its reserve: [`crate::limits::MemoryRoom`]), the same figure a
/// backend bound to the node is checked against. Where the node's meminfo or the
/// zone watermarks cannot be read, the node's MemFree from `topo`.
pub fn node_free_bytes(topo: &HostTopology, node: u32) -> u64 {
    let marks = crate::limits::Watermarks::read();
    match crate::limits::MemoryRoom::read_node(node, &marks) {
        Ok(room) => room.available(),
        Err(_) => topo.node(node).map_or(0, |n| n.mem_free),
    }
}

/// Transparent huge pages are 2 MiB on x86-64 and arm64 with 4 KiB base pages; an
/// interleave stripe of this size keeps each one whole.
const THP_STRIPE: u64 = 2 << 20;

impl RemoteRegion {
    /// Moves the range's resident pages to `targets` (interleaved when several), in
    /// chunks; `progress` counts bytes and may be cancelled from another thread.
    pub fn rebind(
        &self,
        targets: &NodeSet,
        options: RebindOptions,
        progress: &Progress,
    ) -> Result<RemoteRebindReport, RemoteError> {
        let pid = self.pid;
        if targets.is_empty() {
            return Err(RemoteError::NoNodes);
        }
        let topo = HostTopology::read();
        if let Some(why) = topo.unusable_node(targets) {
            return Err(RemoteError::UnusableNode(why));
        }
        let view = self.inspect()?;
        let page = if view.page_size == 0 {
            crate::sys::page_size() as u64
        } else {
            view.page_size
        };
        let hugetlb = view.hugetlb > 0;
        let stripe = if view.thp > 0 {
            THP_STRIPE.max(page)
        } else {
            page
        } / page;
        let nodes: Vec<u32> = targets.iter().collect();

        let target_of = |addr: u64| {
            let i = (addr - self.start) / page;
            nodes[(i / stripe) as usize % nodes.len()] as i32
        };
        let mut report = RemoteRebindReport {
            page_size: page,
            ..Default::default()
        };
        // Windows of the range, one move_pages call each: no per-page list of the
        // whole range is ever held (64 GiB of 4 KiB pages would be 16 M entries).
        let window = (PAGES_PER_CALL as u64 * 4096 / page).max(1);
        let windows = |f: &mut dyn FnMut(Vec<u64>) -> Result<bool, RemoteError>| {
            let pages = self.len / page;
            let mut first = 0;
            while first < pages {
                let n = window.min(pages - first);
                let addrs = (first..first + n).map(|i| self.start + i * page).collect();
                if !f(addrs)? {
                    break;
                }
                first += n;
            }
            Ok::<(), RemoteError>(())
        };

        // Pass 1: where every resident page is, and how many go to each node. Nothing
        // moves before every node's share is known to fit.
        let mut headed: BTreeMap<u32, u64> = BTreeMap::new();
        windows(&mut |addrs| {
            for (addr, now) in addrs.iter().zip(self.page_status(&addrs)?) {
                if now < 0 {
                    continue; // not resident: nothing to move
                }
                report.resident_pages += 1;
                let to = target_of(*addr);
                if now == to {
                    report.already_placed += 1;
                } else {
                    *headed.entry(to as u32).or_default() += 1;
                }
            }
            Ok(true)
        })?;
        check_capacity(&topo, &headed, page, hugetlb)?;
        let planned: u64 = headed.values().sum();

        // Pass 2: the move, window by window, asking again where each page is (the
        // guest runs meanwhile).
        progress.add_total(planned * page);
        let started = Instant::now();
        let mut tried = 0u64;
        let exited = |moved| RemoteError::Exited { pid, moved };
        windows(&mut |addrs| {
            if progress.is_cancelled() {
                report.cancelled = true;
                return Ok(false);
            }
            let now = self.page_status(&addrs).map_err(|e| match e {
                RemoteError::NoProcess { .. } => exited(report.moved),
                e => e,
            })?;
            let batch: Vec<(u64, i32)> = addrs
                .iter()
                .zip(now)
                .filter(|&(&a, n)| n >= 0 && n != target_of(a))
                .map(|(&a, _)| (a, target_of(a)))
                .collect();
            if batch.is_empty() {
                return Ok(true);
            }
            let a: Vec<u64> = batch.iter().map(|p| p.0).collect();
            let n: Vec<i32> = batch.iter().map(|p| p.1).collect();
            let st = match crate::sys::move_pages_of(pid, &a, Some(&n), options.move_all) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(exited(report.moved))
                }
                Err(e) => {
                    let needs = if options.move_all && e.raw_os_error() == Some(libc::EPERM) {
                        error::MOVE_ALL_PERMISSION
                    } else {
                        error::MOVE_PERMISSION
                    };
                    return Err(RemoteError::from_io(pid, "move_pages", &e, needs));
                }
            };
            // A tail page of a huge page moved with its head reports EBUSY or its old
            // node: ask the kernel where such pages are now before calling them failed.
            let mut unsure: Vec<(u64, i32, i32)> = Vec::new();
            for (&(addr, to), s) in batch.iter().zip(st) {
                if s == to {
                    report.moved += 1;
                    *report.moved_per_node.entry(to as u32).or_default() += 1;
                } else {
                    unsure.push((addr, to, s));
                }
            }
            if !unsure.is_empty() {
                let a: Vec<u64> = unsure.iter().map(|f| f.0).collect();
                let now = self.page_status(&a).map_err(|e| match e {
                    RemoteError::NoProcess { .. } => exited(report.moved),
                    e => e,
                })?;
                for ((_, to, s), n) in unsure.into_iter().zip(now) {
                    if n == to {
                        report.moved += 1;
                        *report.moved_per_node.entry(to as u32).or_default() += 1;
                    } else {
                        let errno = if s < 0 { -s } else { libc::EAGAIN };
                        *report.failed.entry(errno).or_default() += 1;
                    }
                }
            }
            tried += batch.len() as u64;
            progress.add_done(batch.len() as u64 * page);
            Ok(true)
        })?;
        report.skipped = if report.cancelled {
            planned.saturating_sub(tried)
        } else {
            0
        };
        report.seconds = started.elapsed().as_secs_f64();

        let after = self.inspect()?;
        report.policy_after = after
            .numa
            .as_ref()
            .map_or_else(|u| u.to_string(), |n| n.policy.clone());
        report.warnings = policy_warnings(&after, targets, &report.policy_after);
        if report.failed.contains_key(&libc::EACCES) && !options.move_all {
            report.warnings.push(format!(
                "{} pages are mapped by more than one process and stayed: moving them needs \
                 MPOL_MF_MOVE_ALL, which needs {}",
                report.failed[&libc::EACCES],
                error::MOVE_ALL_PERMISSION
            ));
        }
        Ok(report)
    }
}

/// Refuses a plan a node cannot take: its share of base pages against its free memory,
/// or its share of huge pages against its pool.
fn check_capacity(
    topo: &HostTopology,
    headed: &BTreeMap<u32, u64>,
    page: u64,
    hugetlb: bool,
) -> Result<(), RemoteError> {
    for (&node, &pages) in headed {
        if hugetlb {
            let free = topo
                .node(node)
                .and_then(|n| n.pool(page))
                .map_or(0, |p| p.free);
            if pages > free {
                return Err(RemoteError::NotEnoughHugePages {
                    node,
                    page_size: page,
                    needed: pages,
                    free,
                });
            }
        } else {
            let free = node_free_bytes(topo, node);
            if pages * page > free {
                return Err(RemoteError::NotEnoughFree {
                    node,
                    needed: pages * page,
                    free,
                });
            }
        }
    }
    Ok(())
}

/// What later faults will do, when the range's policy sends them elsewhere.
fn policy_warnings(
    after: &crate::inspect::KernelView,
    targets: &NodeSet,
    text: &str,
) -> Vec<String> {
    let Ok(p) = &after.mempolicy else {
        return vec![format!(
            "the range's policy is unknown ({text}); pages faulted later may go anywhere"
        )];
    };
    let elsewhere = match p.mode {
        KernelMode::Default | KernelMode::Local => true,
        _ => p.nodes.iter().any(|n| !targets.contains(n)),
    };
    if elsewhere {
        vec![format!(
            "the range's own policy is \"{text}\": pages faulted in later follow it, not \
             nodes {targets}{}",
            if matches!(p.mode, KernelMode::Default | KernelMode::Local) {
                " (they go to the node of the CPU that touches them)"
            } else {
                ""
            }
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Process;

    #[test]
    fn refusals_come_before_any_page_moves() {
        let me = Process::new(std::process::id()).unwrap();
        let page = crate::sys::page_size();
        let map = crate::sys::RawMapping::map(4 * page, None, 0, Default::default()).unwrap();
        map.write_at(0, &[1]).unwrap();
        let r = me.region(map.addr() as u64, map.len() as u64).unwrap();
        let p = Progress::new();
        assert!(matches!(
            r.rebind(&NodeSet::new(), RebindOptions::default(), &p),
            Err(RemoteError::NoNodes)
        ));
        let missing = NodeSet::parse("1000").unwrap();
        let e = r
            .rebind(&missing, RebindOptions::default(), &p)
            .unwrap_err();
        assert!(e.to_string().contains("node 1000 does not exist"), "{e}");
        assert_eq!(p.total(), 0, "nothing planned");
    }

    #[test]
    fn moving_to_the_node_the_pages_are_on_moves_nothing() {
        let me = Process::new(std::process::id()).unwrap();
        let page = crate::sys::page_size();
        let map = crate::sys::RawMapping::map(4 * page, None, 0, Default::default()).unwrap();
        map.write_at(0, &[1]).unwrap();
        map.write_at(page, &[1]).unwrap();
        let r = me.region(map.addr() as u64, map.len() as u64).unwrap();
        let node = r
            .placement(page as u64)
            .unwrap()
            .per_node
            .into_keys()
            .next()
            .unwrap();
        let one = NodeSet::parse(&node.to_string()).unwrap();
        let rep = r
            .rebind(&one, RebindOptions::default(), &Progress::new())
            .unwrap();
        assert_eq!(
            (rep.resident_pages, rep.already_placed, rep.moved),
            (2, 2, 0)
        );
        assert!(rep.failed.is_empty());
    }

    #[test]
    fn a_share_larger_than_the_nodes_available_memory_is_refused() {
        let topo = HostTopology::read();
        let total = topo.node(0).map_or(0, |n| n.mem_total);
        assert!(total > 0, "node 0 reads as having memory");
        let one: BTreeMap<u32, u64> = [(0, 1)].into();
        assert!(check_capacity(&topo, &one, 4096, false).is_ok());
        // More than the node has at all: whatever else runs, it cannot be available.
        let too_many: BTreeMap<u32, u64> = [(0, total / 4096 + 1)].into();
        match check_capacity(&topo, &too_many, 4096, false) {
            Err(RemoteError::NotEnoughFree {
                node: 0,
                needed,
                free,
            }) => {
                assert_eq!(needed, (total / 4096 + 1) * 4096);
                assert!(
                    free < total,
                    "available {free} is less than MemTotal {total}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Huge pages are counted against the node's pool of that size.
        let pool = topo
            .node(0)
            .and_then(|n| n.pool(2 << 20))
            .map_or(0, |p| p.free);
        let huge: BTreeMap<u32, u64> = [(0, pool + 1)].into();
        assert!(matches!(
            check_capacity(&topo, &huge, 2 << 20, true),
            Err(RemoteError::NotEnoughHugePages { node: 0, .. })
        ));
    }
}
