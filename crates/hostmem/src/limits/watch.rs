//! The limits of a batch, watched between preallocation steps.
//!
//! Each thread asks for every step before faulting it in ([`Watch::grant`]) and says
//! when it is done ([`Watch::finish`]). A ledger keeps, per limit, the room read last
//! less what was granted since, so most grants are arithmetic under a mutex held for
//! nanoseconds while the other threads keep faulting pages in: the threads stay
//! parallel. The files are read again (one meminfo per bound node, the host's
//! meminfo, the cgroup's two files) every [`REFRESH`] bytes over all threads, and
//! before every step once a limit's room is within [`NEAR`] of the step: far from the
//! edge a read costs about 10 µs per 32 MiB faulted in (milliseconds of work), near it
//! every step sees what another process took. What another process takes between two
//! reads is seen at most [`REFRESH`] bytes late (plus the steps in flight), which the
//! min watermark and the reclaimable page cache absorb.
//! A step that no longer fits stops the batch: the engine stops every thread and the
//! backend gives every page back before it reports the [`Edge`].
//!
//! A file that cannot be read any more mid-run (an administrator removed the cgroup)
//! is treated as room: the check before mapping already passed, and stopping on a
//! read error would turn a monitoring hiccup into a failed VM start.

use std::sync::Mutex;

use super::cgroup::CgroupLimit;
use super::meminfo::MemoryRoom;
use super::Known;

/// Bytes faulted in over all threads between two reads of the limits, far from the edge.
pub const REFRESH: u64 = 32 << 20;
/// Room under which the limits are read before every step.
pub const NEAR: u64 = 256 << 20;

/// What one watched limit reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The nodes a strict policy binds to, with each one's min watermark: their
    /// meminfo files, summed.
    Nodes(Vec<(u32, u64)>),
    /// /proc/meminfo, with every node's min watermark.
    Host(u64),
    /// A cgroup's limit and use files.
    Cgroup(CgroupLimit),
}

impl Source {
    /// Bytes the limit can still give, read now.
    pub(crate) fn available(&self) -> Known<u64> {
        match self {
            Source::Nodes(nodes) => nodes.iter().try_fold(0, |sum, &(n, mark)| {
                Ok(sum + MemoryRoom::read_file(&MemoryRoom::node_path(n), mark)?.available())
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
    /// Per limit: room at the last read less what was granted since.
    headroom: Vec<i128>,
    /// Per limit: granted, not yet finished (not yet visible in the files).
    in_flight: Vec<u64>,
    done: Vec<u64>,
    total: Vec<u64>,
    since_read: u64,
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
                // Read before the first step.
                headroom: vec![i128::MIN / 2; n],
                in_flight: vec![0; n],
                done: vec![0; n],
                total,
                since_read: 0,
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
        let near = limits
            .iter()
            .any(|&i| l.headroom[i] < i128::from(len + NEAR));
        if near || l.since_read >= REFRESH {
            for (i, s) in self.sources.iter().enumerate() {
                l.headroom[i] = match s.available() {
                    Ok(a) => i128::from(a) - i128::from(l.in_flight[i]),
                    Err(_) => i128::MAX / 2,
                };
            }
            l.since_read = 0;
        }
        if let Some(&i) = limits.iter().find(|&&i| l.headroom[i] < i128::from(len)) {
            let edge = Edge {
                limit: i,
                needed: l.total[i].saturating_sub(l.done[i]),
                available: u64::try_from(l.headroom[i].max(0)).unwrap_or(u64::MAX),
                done: l.done[i],
            };
            l.stop = Some(edge.clone());
            return Err(Some(edge));
        }
        for &i in limits {
            l.headroom[i] -= i128::from(len);
            l.in_flight[i] += len;
        }
        l.since_read += len;
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
}
