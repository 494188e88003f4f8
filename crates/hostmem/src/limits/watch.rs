//! The limits of a batch, watched between preallocation steps.
//!
//! Each thread asks for every step before faulting it in (`Watch::grant`) and says
//! when it is done (`Watch::finish`). A grant reads the files of the job's limits
//! again (one meminfo per bound node, or the host's; the cgroup's two files: about
//! 10 µs against the milliseconds a 16 MiB step takes) and compares the room with the
//! step plus the steps of other threads still in flight (granted, not yet visible in
//! the files). The ledger's mutex is held for the read, so reads do not overlap, but
//! the other threads keep faulting pages in meanwhile: the threads stay parallel.
//!
//! Reading before every step, not every so many bytes, is what makes the edge hold:
//! an eater that takes the room between two reads would otherwise be seen only after
//! the steps granted from the stale figure, and those are what would wake the OOM
//! killer. (The first version read every 32 MiB far from the edge; the guest test
//! with a paused hostmem and an eater showed exactly that overrun.)
//!
//! A step that no longer fits stops the batch: the engine stops every thread and the
//! backend gives every page back before it reports the [`Edge`]. The room figures
//! leave out free pages parked on per-CPU lists, so they err on the side of stopping.
//!
//! Bound nodes whose figures did not add up to the host's before mapping
//! ([`super::uncounted`]) are, when their meminfo falls short of a step, read again with
//! the host, every node and /proc/zoneinfo (about 100 µs, only near the edge): the
//! kernel may still add the pages it has not initialised to the node.
//!
//! A file that cannot be read any more mid-run (an administrator removed the cgroup)
//! is treated as room: the check before mapping already passed, and stopping on a
//! read error would turn a monitoring hiccup into a failed VM start.

use std::path::PathBuf;
use std::sync::Mutex;

use super::cgroup::CgroupLimit;
use super::meminfo::MemoryRoom;
use super::uncounted::{Files, Uncounted};
use super::Known;

/// What one watched limit reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The nodes a strict policy binds to: each one's meminfo file with its kernel
    /// reserve, summed; and when the nodes did not add up to the host, which ones to
    /// compare again.
    Nodes(Vec<(PathBuf, u64)>, Option<Beyond>),
    /// /proc/meminfo, with every node's kernel reserve.
    Host(u64),
    /// A cgroup's limit and use files.
    Cgroup(CgroupLimit),
}

impl Source {
    /// Bytes the limit can still give, read now.
    pub(crate) fn available(&self) -> Known<u64> {
        match self {
            Source::Nodes(nodes, _) => nodes.iter().try_fold(0, |sum, (path, mark)| {
                Ok(sum + MemoryRoom::read_file(path, *mark)?.available())
            }),
            Source::Host(mark) => Ok(MemoryRoom::read_file(
                std::path::Path::new("/proc/meminfo"),
                *mark,
            )?
            .available()),
            Source::Cgroup(l) => Ok(l.reread()?.room()),
        }
    }
}

/// The nodes to compare with the host again when bound nodes' meminfo falls short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Beyond {
    /// The bound nodes.
    pub(crate) bound: Vec<u32>,
    /// The host's files and every node's with memory.
    pub(crate) files: Files,
}

impl Source {
    /// Bytes the limit can give when [`Self::available`] falls short of `len`: bound
    /// nodes add what they may give beyond their meminfo, read now.
    fn available_for(&self, len: u64, in_flight: u64) -> Known<u64> {
        let shown = self.available()?;
        match self {
            Source::Nodes(_, Some(b)) if shown.saturating_sub(in_flight) < len => {
                Ok(shown
                    + Uncounted::read(&b.files).map_or(0, |u| u.extra(b.bound.iter().copied())))
            }
            _ => Ok(shown),
        }
    }
}

/// Where a batch's preallocation stopped: a step of a job would have crossed a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Index of the limit in the watch (the backend check names it).
    pub limit: usize,
    /// Bytes the batch still had to fault in under this limit, the refused step included.
    pub needed: u64,
    /// Bytes the limit could give when the step was refused, less the steps of other
    /// threads still in flight.
    pub available: u64,
    /// Bytes the batch had faulted in under this limit when it stopped.
    pub done: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Per limit: granted, not yet finished (not yet visible in the files).
    in_flight: Vec<u64>,
    done: Vec<u64>,
    total: Vec<u64>,
    stop: Option<Edge>,
}

/// The limits one batch is watched against, with the ledger of its threads.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    sources: Vec<Source>,
    ledger: Mutex<Ledger>,
}

impl Watch {
    /// Watches `limits`, each with the bytes the batch will fault in under it.
    pub(crate) fn new(limits: Vec<(Source, u64)>) -> Watch {
        let n = limits.len();
        let (sources, total): (Vec<Source>, Vec<u64>) = limits.into_iter().unzip();
        Watch {
            sources,
            ledger: Mutex::new(Ledger {
                in_flight: vec![0; n],
                done: vec![0; n],
                total,
                stop: None,
            }),
        }
    }

    /// Whether nothing is watched.
    pub(crate) fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Asks for a step of `len` bytes under `limits`. Refused with the [`Edge`] for the
    /// step that would cross a limit, and with None for every step after that one,
    /// anywhere in the batch (the batch is stopping; the first refusal explains it).
    pub(crate) fn grant(&self, limits: &[usize], len: u64) -> Result<(), Option<Edge>> {
        if limits.is_empty() {
            return Ok(());
        }
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if l.stop.is_some() {
            return Err(None);
        }
        for &i in limits {
            let Ok(avail) = self.sources[i].available_for(len, l.in_flight[i]) else {
                continue;
            };
            let room = avail.saturating_sub(l.in_flight[i]);
            if room < len {
                let edge = Edge {
                    limit: i,
                    needed: l.total[i].saturating_sub(l.done[i]),
                    available: room,
                    done: l.done[i],
                };
                l.stop = Some(edge.clone());
                return Err(Some(edge));
            }
        }
        for &i in limits {
            l.in_flight[i] += len;
        }
        Ok(())
    }

    /// A granted step is faulted in (or failed): it is in the files now.
    pub(crate) fn finish(&self, limits: &[usize], len: u64) {
        if limits.is_empty() {
            return;
        }
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        for &i in limits {
            l.in_flight[i] = l.in_flight[i].saturating_sub(len);
            l.done[i] += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::cgroup::CgroupVersion;

    /// A cgroup limit in a scratch directory whose use the test moves.
    fn scratch_cgroup(max: u64) -> (std::path::PathBuf, Source) {
        let dir = std::env::temp_dir().join(format!("hostmem-watch-{}-{max}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), max.to_string()).unwrap();
        std::fs::write(dir.join("memory.current"), "0").unwrap();
        let l = CgroupLimit {
            cgroup: "/t".into(),
            dir: dir.clone(),
            version: CgroupVersion::V2,
            max_file: "memory.max".into(),
            current_file: "memory.current".into(),
            max,
            current: 0,
        };
        (dir, Source::Cgroup(l))
    }

    #[test]
    fn a_step_that_would_cross_what_another_process_took_is_refused() {
        let (dir, src) = scratch_cgroup(100 << 20);
        let w = Watch::new(vec![(src, 80 << 20)]);
        let step = 16 << 20;
        w.grant(&[0], step).unwrap();
        w.finish(&[0], step);
        // The step is charged now, and another process takes 70 MiB.
        std::fs::write(dir.join("memory.current"), ((16 + 70) << 20).to_string()).unwrap();
        let edge = w.grant(&[0], step).unwrap_err().unwrap();
        assert_eq!(
            edge,
            Edge {
                limit: 0,
                needed: 64 << 20,
                available: 14 << 20,
                done: 16 << 20
            }
        );
        assert_eq!(
            w.grant(&[], step),
            Ok(()),
            "a job under no limit is not stopped"
        );
        assert_eq!(w.grant(&[0], 4096), Err(None), "the batch stays stopped");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn steps_in_flight_count_against_the_room_before_they_show() {
        let (dir, src) = scratch_cgroup(40 << 20);
        let w = Watch::new(vec![(src, 48 << 20)]);
        let step = 16 << 20;
        w.grant(&[0], step).unwrap();
        w.grant(&[0], step).unwrap();
        // Two steps in flight, nothing charged in the file yet: 8 MiB left.
        assert_eq!(w.grant(&[0], step).unwrap_err().unwrap().available, 8 << 20);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_step_that_ends_exactly_at_the_limit_is_granted_and_the_next_refused() {
        let (dir, src) = scratch_cgroup(32 << 20);
        let w = Watch::new(vec![(src, 48 << 20)]);
        let step = 16 << 20;
        assert_eq!(w.grant(&[0], step), Ok(()));
        assert_eq!(w.grant(&[0], step), Ok(()), "the room is exactly the step");
        assert_eq!(w.grant(&[0], step).unwrap_err().unwrap().available, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bound_nodes_give_the_sum_of_their_meminfo_room_less_each_reserve() {
        let dir = std::env::temp_dir().join(format!("hostmem-watch-{}-nodes", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let node = |n: u32, free_kb: u64| {
            let path = dir.join(format!("node{n}-meminfo"));
            let text = format!(
                "Node {n} MemTotal:       1048576 kB\nNode {n} MemFree:        {free_kb} kB\n\
                 Node {n} Active(file):   1024 kB\nNode {n} Inactive(file): 1024 kB\n\
                 Node {n} SReclaimable:   2048 kB\n"
            );
            std::fs::write(&path, text).unwrap();
            path
        };
        // Node 1: 100 MiB free + 4 MiB reclaimable - 1 MiB reserve; node 4: 50 + 4 - 2.
        let src = Source::Nodes(
            vec![(node(1, 100 << 10), 1 << 20), (node(4, 50 << 10), 2 << 20)],
            None,
        );
        assert_eq!(src.available(), Ok((103 + 52) << 20));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bound_node_short_in_its_meminfo_is_granted_what_the_kernel_may_still_add_to_it() {
        let dir = std::env::temp_dir().join(format!("hostmem-watch-{}-lazy", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (host, node0, zones) = crate::limits::uncounted::tests::lazy_files();
        let files = Files {
            meminfo: dir.join("meminfo"),
            nodes: vec![(0, dir.join("node0-meminfo"))],
            zoneinfo: dir.join("zoneinfo"),
        };
        std::fs::write(&files.meminfo, &host).unwrap();
        std::fs::write(&files.nodes[0].1, &node0).unwrap();
        std::fs::write(&files.zoneinfo, zones).unwrap();
        let gib: u64 = 1 << 30;
        let source = |beyond: bool| {
            Source::Nodes(
                vec![(files.nodes[0].1.clone(), 0)],
                beyond.then(|| Beyond {
                    bound: vec![0],
                    files: files.clone(),
                }),
            )
        };
        // Node 0's meminfo shows 9.5 GiB, the host 10.5 GiB more free: 10 GiB is granted.
        let w = Watch::new(vec![(source(true), 14 * gib)]);
        assert_eq!(w.grant(&[0], 10 * gib), Ok(()));
        // 10 GiB in flight: 10 GiB left of the 20, so 11 more is refused.
        let edge = w.grant(&[0], 11 * gib).unwrap_err().unwrap();
        assert_eq!(edge.available, 10 * gib);
        // Without the comparison (the nodes added up before mapping): node 0's figure.
        let w = Watch::new(vec![(source(false), 14 * gib)]);
        let shown = (9_500u64 << 20) / 1000 * 1024;
        assert_eq!(
            w.grant(&[0], 10 * gib).unwrap_err().unwrap().available,
            shown
        );
        // The host now counts what node 0 counts: the figure alone again.
        std::fs::write(&files.meminfo, node0.replace("Node 0 ", "")).unwrap();
        let w = Watch::new(vec![(source(true), 14 * gib)]);
        assert_eq!(
            w.grant(&[0], 10 * gib).unwrap_err().unwrap().available,
            shown
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
