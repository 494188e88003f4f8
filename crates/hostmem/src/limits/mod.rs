//! What the host can still give guest memory, read from the kernel's own accounting:
//! per node (`nodeN/meminfo` less the watermarks of `/proc/zoneinfo`), host-wide
//! (`/proc/meminfo`), the process's memory cgroup and its hugetlb cgroup limits
//! (v2 or v1). The backend checks (`backend/room.rs`) compare a batch's needs with these
//! before mapping; `watch.rs` re-reads the relevant ones between prealloc steps, so a
//! process that takes the memory meanwhile makes hostmem stop and give its pages back
//! instead of letting the OOM killer choose a victim.
//!
//! Where the nodes' figures do not add up to the host's, [`Uncounted`] works out what a
//! node may give beyond its meminfo, marked uncertain.
//!
//! A file that cannot be read is an [`Unknown`] carrying the path and the reason, never a
//! silent 0 (which would refuse everything) or "unlimited" (which would hide a limit).

pub(crate) mod cgroup;
pub(crate) mod meminfo;
pub(crate) mod uncounted;
pub(crate) mod watch;

use std::path::Path;

pub use cgroup::{CgroupLimit, CgroupVersion};
pub use meminfo::{MemoryRoom, Watermarks};
pub use uncounted::{Hint, Uncounted};

/// A limit that could not be read: which file, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Unknown {
    /// The file that was read.
    pub path: String,
    /// Why its value is not known (the errno text, or what the parser missed).
    pub reason: String,
}

impl Unknown {
    pub(crate) fn new(path: &Path, reason: impl ToString) -> Unknown {
        Unknown {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A value read from the kernel, or why it could not be.
pub type Known<T> = Result<T, Unknown>;

/// The whole of a small kernel file, with the reason when it cannot be read.
pub(crate) fn read_text(path: &Path) -> Known<String> {
    std::fs::read_to_string(path).map_err(|e| Unknown::new(path, crate::sys::strerror(&e)))
}

/// The first line of a file as a number; `max` (cgroup v2's "no limit") is None.
pub(crate) fn read_limit(path: &Path) -> Known<Option<u64>> {
    let text = read_text(path)?;
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| Unknown::new(path, format!("not a number: {t:?}")))
}

/// Everything the checks read about the host's memory in one snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Per online node with memory: what it can give.
    pub nodes: Vec<(u32, Known<MemoryRoom>)>,
    /// The host as a whole (`/proc/meminfo`).
    pub host: Known<MemoryRoom>,
    /// The tightest memory cgroup limit over this process's cgroup and its ancestors;
    /// `Ok(None)` when none of them has a limit (or there is no memory controller).
    pub memory_cgroup: Known<Option<CgroupLimit>>,
    /// Per huge page size: the tightest hugetlb cgroup limit.
    pub hugetlb_cgroups: Vec<(u64, Known<Option<CgroupLimit>>)>,
    /// The kernel's reserves the node and host figures were read with.
    pub marks: Watermarks,
    /// What the host counts and the nodes do not; None when they add up.
    pub uncounted: Option<Uncounted>,
    /// What else may change the figures (a balloon, offline memory blocks).
    pub hints: Vec<Hint>,
}

impl Snapshot {
    /// Reads every limit now, for the nodes in `nodes` (every node with memory: the
    /// host's figures are compared with their sum) and the huge page `sizes`.
    pub fn read(nodes: impl IntoIterator<Item = u32>, sizes: &[u64]) -> Snapshot {
        let marks = Watermarks::read();
        let nodes: Vec<(u32, Known<MemoryRoom>)> = nodes
            .into_iter()
            .map(|n| (n, MemoryRoom::read_node(n, &marks)))
            .collect();
        let host = MemoryRoom::read_host(&marks);
        Snapshot {
            uncounted: Uncounted::of(&host, &nodes, &marks),
            hints: Hint::read(),
            nodes,
            host,
            memory_cgroup: cgroup::memory(),
            hugetlb_cgroups: sizes.iter().map(|&s| (s, cgroup::hugetlb(s))).collect(),
            marks,
        }
    }

    /// Bytes `nodes` may give beyond their meminfo figures (0 when the nodes add up).
    pub fn extra(&self, nodes: impl IntoIterator<Item = u32>) -> u64 {
        self.uncounted.as_ref().map_or(0, |u| u.extra(nodes))
    }

    /// The room of node `n`, if it was read.
    pub fn node(&self, n: u32) -> Option<&Known<MemoryRoom>> {
        self.nodes.iter().find(|(id, _)| *id == n).map(|(_, r)| r)
    }

    /// The hugetlb cgroup limit for `page_size`, if it was read.
    pub fn hugetlb(&self, page_size: u64) -> Option<&Known<Option<CgroupLimit>>> {
        self.hugetlb_cgroups
            .iter()
            .find(|(s, _)| *s == page_size)
            .map(|(_, l)| l)
    }
}

/// One memory limit and what it can give now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRoom {
    /// Which limit: `node 4`, `host`, `memory cgroup /t (memory.max 268435456)`, ...
    pub limit: String,
    /// Bytes it can give; `Ok(None)`: no limit; `Err`: the file could not be read.
    pub available: Known<Option<u64>>,
    /// Why the figure is uncertain, if it is: bound nodes whose meminfo does not add up
    /// to the host's (`available` then counts what the kernel may still add to them, an
    /// upper bound), a balloon, offline memory blocks.
    pub uncertain: Option<String>,
}
