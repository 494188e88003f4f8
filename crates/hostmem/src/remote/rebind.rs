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
use super::pass::{self, Pages, Windows};
use super::plan::{self, MoveBatch, Stripes};
use super::report::RemoteRebindReport;
use super::RemoteRegion;
use crate::inspect::{MemPolicy, Unknown};
use crate::numa::{HostTopology, KernelMode, NodeSet};
use crate::prealloc::Progress;

/// How to move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebindOptions {
    /// MPOL_MF_MOVE_ALL: also move pages other processes map (needs CAP_SYS_NICE).
    pub move_all: bool,
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

impl RemoteRegion {
    /// Moves the range's resident pages to `targets` (interleaved when several), in
    /// chunks; `progress` counts bytes and may be cancelled from another thread.
    pub fn rebind(
        &self,
        targets: &NodeSet,
        options: RebindOptions,
        progress: &Progress,
    ) -> Result<RemoteRebindReport, RemoteError> {
        if targets.is_empty() {
            return Err(RemoteError::NoNodes);
        }
        let topo = HostTopology::read();
        if let Some(why) = topo.unusable_node(targets) {
            return Err(RemoteError::UnusableNode(why));
        }
        let view = self.inspect()?;
        let page = plan::move_page_size(view.page_size, crate::sys::page_size() as u64);
        let hugetlb = view.hugetlb > 0;
        let stripes = Stripes::new(self.start, page, view.thp > 0, targets.iter().collect());
        let mut report = RemoteRebindReport {
            page_size: page,
            ..Default::default()
        };
        let windows = Windows {
            start: self.start,
            len: self.len,
            page,
            window: plan::window_pages(page),
        };
        let mut live = Live {
            region: self,
            move_all: options.move_all,
        };

        // Pass 1: where every resident page is, and how many go to each node. Nothing
        // moves before every node's share is known to fit.
        let survey = pass::survey(windows, &stripes, &mut live)?;
        report.resident_pages = survey.resident;
        report.already_placed = survey.already_placed;
        check_capacity(&topo, &survey.headed, page, hugetlb)?;
        let planned = survey.planned();

        // Pass 2: the move, window by window.
        progress.add_total(planned * page);
        let started = Instant::now();
        pass::move_windows(windows, &stripes, &mut live, &mut report, progress)?;
        report.skipped = skipped_pages(&report, planned);
        report.seconds = started.elapsed().as_secs_f64();

        let after = self.inspect()?;
        report.policy_after = after
            .numa
            .as_ref()
            .map_or_else(|u| u.to_string(), |n| n.policy.clone());
        report.warnings = policy_warnings(&after.mempolicy, targets, &report.policy_after);
        report
            .warnings
            .extend(shared_pages_warning(&report.failed, options.move_all));
        Ok(report)
    }
}

/// The process's pages as the move pass sees them: move_pages(2) with its pid.
struct Live<'a> {
    region: &'a RemoteRegion,
    move_all: bool,
}

impl Pages for Live<'_> {
    fn status(&mut self, addrs: &[u64]) -> Result<Vec<i32>, RemoteError> {
        self.region.page_status(addrs)
    }

    fn move_batch(&mut self, batch: &MoveBatch, moved: u64) -> Result<Vec<i32>, RemoteError> {
        let pid = self.region.pid;
        crate::sys::move_pages_of(pid, &batch.addrs, Some(&batch.nodes), self.move_all)
            .map_err(|e| RemoteError::from_move(pid, &e, self.move_all, moved))
    }
}

/// Pages a cancelled move did not try: every page tried ended moved or failed.
fn skipped_pages(report: &RemoteRebindReport, planned: u64) -> u64 {
    if report.cancelled {
        planned.saturating_sub(report.moved + report.failed_total())
    } else {
        0
    }
}

/// Pages that stayed because other processes map them, when the move did not ask
/// for MPOL_MF_MOVE_ALL: what it would take to move them.
fn shared_pages_warning(failed: &BTreeMap<i32, u64>, move_all: bool) -> Option<String> {
    let shared = *failed.get(&libc::EACCES)?;
    (!move_all).then(|| {
        format!(
            "{shared} pages are mapped by more than one process and stayed: moving them \
             needs MPOL_MF_MOVE_ALL, which needs {}",
            error::MOVE_ALL_PERMISSION
        )
    })
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
        let free = if hugetlb {
            topo.node(node)
                .and_then(|n| n.pool(page))
                .map_or(0, |p| p.free)
        } else {
            node_free_bytes(topo, node)
        };
        check_share(node, pages, page, hugetlb, free)?;
    }
    Ok(())
}

/// Refuses `pages` pages headed to `node` when it has less room: `free` is free huge
/// pages of the node's pool of `page` size (`hugetlb`), else available bytes. A share
/// that exactly fills the room fits.
fn check_share(
    node: u32,
    pages: u64,
    page: u64,
    hugetlb: bool,
    free: u64,
) -> Result<(), RemoteError> {
    if hugetlb {
        if pages > free {
            return Err(RemoteError::NotEnoughHugePages {
                node,
                page_size: page,
                needed: pages,
                free,
            });
        }
    } else if pages * page > free {
        return Err(RemoteError::NotEnoughFree {
            node,
            needed: pages * page,
            free,
        });
    }
    Ok(())
}

/// What later faults will do, when the range's policy sends them elsewhere.
fn policy_warnings(
    after: &Result<MemPolicy, Unknown>,
    targets: &NodeSet,
    text: &str,
) -> Vec<String> {
    let Ok(p) = after else {
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
    use crate::remote::own_pages;

    #[test]
    fn refusals_come_before_any_page_moves() {
        let (_map, r) = own_pages(4, &[0]);
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
        let page = crate::sys::page_size();
        let (_map, r) = own_pages(4, &[0, 1]);
        let node = r
            .placement(page as u64)
            .unwrap()
            .per_node
            .into_keys()
            .next()
            .unwrap();
        let one = NodeSet::parse(&node.to_string()).unwrap();
        let p = Progress::new();
        let rep = r.rebind(&one, RebindOptions::default(), &p).unwrap();
        assert_eq!(
            (rep.resident_pages, rep.already_placed, rep.moved),
            (2, 2, 0)
        );
        assert_eq!(rep.page_size, page as u64, "smaps' KernelPageSize");
        assert!(rep.failed.is_empty());
        assert_eq!(p.total(), 0, "nothing planned, nothing counted to do");
        assert!(!rep.cancelled);
        // numa_maps' policy of a plain mapping; later faults follow the CPU.
        assert_eq!(rep.policy_after, "default");
        assert_eq!(rep.warnings.len(), 1, "{:?}", rep.warnings);
        assert!(
            rep.warnings[0].contains("\"default\""),
            "{:?}",
            rep.warnings
        );
    }

    #[test]
    fn a_move_cancelled_before_it_starts_reports_cancelled_and_moves_nothing() {
        let (_map, r) = own_pages(2, &[0]);
        let p = Progress::new();
        p.cancel();
        let all = NodeSet::parse("0").unwrap();
        let rep = r.rebind(&all, RebindOptions::default(), &p).unwrap();
        assert!(rep.cancelled);
        assert_eq!((rep.resident_pages, rep.moved, p.done()), (1, 0, 0));
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

    #[test]
    fn a_share_that_exactly_fills_the_room_fits_and_one_page_more_is_refused() {
        assert!(check_share(2, 10, 4096, false, 10 * 4096).is_ok());
        let e = check_share(2, 11, 4096, false, 10 * 4096).unwrap_err();
        assert!(
            matches!(e, RemoteError::NotEnoughFree { node: 2, needed, free: 40960 } if needed == 11 * 4096),
            "{e:?}"
        );
        assert!(check_share(1, 3, 2 << 20, true, 3).is_ok());
        let e = check_share(1, 4, 2 << 20, true, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused before moving any page: node 1 would receive 4 2 MiB huge pages but its \
             pool has 3 free"
        );
    }

    fn moved(pages: u64, page_size: u64, seconds: f64) -> RemoteRebindReport {
        RemoteRebindReport {
            page_size,
            moved: pages,
            seconds,
            ..Default::default()
        }
    }

    #[test]
    fn bytes_moved_are_pages_times_page_size() {
        assert_eq!(moved(3, 2 << 20, 1.0).bytes_moved(), 6 << 20);
    }

    #[test]
    fn failed_total_sums_every_errno() {
        let r = RemoteRebindReport {
            failed: [(libc::EACCES, 3), (libc::EBUSY, 2)].into(),
            ..Default::default()
        };
        assert_eq!(r.failed_total(), 5);
    }

    #[test]
    fn gib_per_sec_is_bytes_over_seconds_in_gib_and_zero_without_a_move() {
        assert_eq!(moved(512, 2 << 20, 0.5).gib_per_sec(), 2.0);
        assert_eq!(moved(512, 2 << 20, 0.0).gib_per_sec(), 0.0, "no time");
        assert_eq!(moved(0, 4096, 0.5).gib_per_sec(), 0.0, "no pages");
    }

    #[test]
    fn a_cancelled_move_skips_the_planned_pages_it_did_not_try() {
        let mut r = RemoteRebindReport {
            moved: 5,
            failed: [(libc::EBUSY, 2)].into(),
            ..Default::default()
        };
        assert_eq!(skipped_pages(&r, 10), 0, "not cancelled: nothing skipped");
        r.cancelled = true;
        assert_eq!(skipped_pages(&r, 10), 3);
    }

    #[test]
    fn shared_pages_that_stayed_warn_only_without_move_all() {
        let failed: BTreeMap<i32, u64> = [(libc::EACCES, 4), (libc::EBUSY, 1)].into();
        let w = shared_pages_warning(&failed, false).unwrap();
        assert!(
            w.starts_with("4 pages are mapped by more than one process and stayed"),
            "{w}"
        );
        assert!(w.ends_with(error::MOVE_ALL_PERMISSION), "{w}");
        assert_eq!(shared_pages_warning(&failed, true), None);
        let busy: BTreeMap<i32, u64> = [(libc::EBUSY, 1)].into();
        assert_eq!(shared_pages_warning(&busy, false), None);
    }

    fn policy(mode: KernelMode, nodes: &str) -> Result<MemPolicy, Unknown> {
        Ok(MemPolicy {
            mode,
            nodes: NodeSet::parse(nodes).unwrap(),
        })
    }

    #[test]
    fn a_policy_inside_the_targets_gives_no_warning() {
        let targets = NodeSet::parse("0-2").unwrap();
        let p = policy(KernelMode::Interleave, "0,2");
        assert_eq!(
            policy_warnings(&p, &targets, "interleave:0,2"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_policy_naming_a_node_outside_the_targets_warns() {
        let targets = NodeSet::parse("0-1").unwrap();
        let p = policy(KernelMode::Bind, "1-2");
        assert_eq!(
            policy_warnings(&p, &targets, "bind:1-2"),
            [
                "the range's own policy is \"bind:1-2\": pages faulted in later follow it, not \
              nodes 0-1"
            ]
        );
    }

    #[test]
    fn default_and_local_policies_warn_that_later_faults_follow_the_cpu() {
        let targets = NodeSet::parse("1").unwrap();
        for mode in [KernelMode::Default, KernelMode::Local] {
            let w = policy_warnings(&policy(mode, ""), &targets, "default");
            assert_eq!(w.len(), 1, "{mode:?}");
            assert!(
                w[0].ends_with("(they go to the node of the CPU that touches them)"),
                "{w:?}"
            );
        }
    }

    #[test]
    fn an_unknown_policy_warns_that_later_faults_may_go_anywhere() {
        let unknown = Err(Unknown {
            what: "get_mempolicy".into(),
            reason: "Function not implemented".into(),
        });
        let targets = NodeSet::parse("0").unwrap();
        assert_eq!(
            policy_warnings(&unknown, &targets, "unknown"),
            ["the range's policy is unknown (unknown); pages faulted later may go anywhere"]
        );
    }
}
