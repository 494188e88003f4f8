//! Memory the host counts and its nodes do not, and what else makes a node's figure
//! uncertain.
//!
//! On an upstream kernel after boot the nodes' meminfo and /proc/meminfo count the same
//! pages: /proc/meminfo's MemTotal is the zones' managed pages, which the nodes'
//! MemTotal add up to, and the same goes for MemFree. Some kernels differ. The VM this
//! project's CI runs in boots with `deferred_init=lazy` ("5361485 pages left to
//! deferred_grow_zone()"): most of node 0's Normal zone is *present* but not yet
//! *managed*, /proc/meminfo counts those pages, total and free, node 0's meminfo does
//! not (12.6 of 23.5 GiB at one point). The kernel hands them to the zone when an
//! allocation finds the zone below its low watermark (`deferred_grow_zone()`, called
//! from `get_page_from_freelist()` before kswapd or direct reclaim), a 128 MiB section
//! at a time: memory the node gives although its meminfo does not show it. (Upstream
//! does the same, but only until the boot-time threads have initialised everything.)
//! Held to node 0's figure, hostmem refused 14 GiB bound to node 0 that the kernel then
//! preallocated there.
//!
//! The rule: when the host's MemTotal or MemFree exceeds the sum over the nodes by more
//! than [`SLACK`], the nodes do not add up, and a bound node may give, beyond its
//! meminfo figure, up to its zones' present − managed pages; all bound nodes together
//! at most the free memory the host counts and no node does. No file says which node
//! holds those pages (present − managed also counts what the firmware and the kernel
//! reserved), so that figure is an upper bound and marked uncertain: `hostmem host` and
//! `--check` say so, with the numbers. A need beyond even the bound is refused; nodes
//! that add up (a NUMA host, the NUMA test guest) are held to their figures exactly.
//!
//! A balloon or memory blocks that are offline change what the host has without the
//! nodes and the host disagreeing: the kernel gives a deflate-on-oom balloon's pages
//! back only from the OOM path, after reclaim, and offline blocks only once someone
//! onlines them. Neither is counted; both are [`Hint`]s shown next to the figures.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{read_text, Known, MemoryRoom, Watermarks};
use crate::size::format_size;

/// How far the host's figures may exceed the nodes' sum and still add up: the files are
/// read one after another, and MemFree moves meanwhile (64 MiB is a fraction of what a
/// node that really misses pages misses, 12 GiB here).
pub const SLACK: u64 = 64 << 20;

const MEMORY_DIR: &str = "/sys/devices/system/memory";

/// The host's figures against the sum of its nodes', when they do not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncounted {
    /// `MemTotal` of /proc/meminfo, bytes.
    pub host_total: u64,
    /// The nodes' `MemTotal`, summed.
    pub nodes_total: u64,
    /// `MemFree` of /proc/meminfo.
    pub host_free: u64,
    /// The nodes' `MemFree`, summed.
    pub nodes_free: u64,
    /// Per node: bytes of its zones present but not managed (/proc/zoneinfo); None when
    /// zoneinfo could not be read (then every node may hold all of [`Self::free`]).
    pub unmanaged: Option<BTreeMap<u32, u64>>,
}

impl Uncounted {
    /// Compares `host` with `nodes` (every node with memory); None when they add up
    /// within `SLACK` (64 MiB), or when a figure is unknown (that limit refuses nothing then).
    pub fn of(
        host: &Known<MemoryRoom>,
        nodes: &[(u32, Known<MemoryRoom>)],
        marks: &Watermarks,
    ) -> Option<Uncounted> {
        let host = host.as_ref().ok()?;
        let (mut nodes_total, mut nodes_free) = (0, 0);
        for (_, r) in nodes {
            let r = r.as_ref().ok()?;
            nodes_total += r.total;
            nodes_free += r.free;
        }
        let over = |h: u64, n: u64| h.saturating_sub(n) > SLACK;
        if !over(host.total, nodes_total) && !over(host.free, nodes_free) {
            return None;
        }
        let unmanaged = marks.unknown.is_none().then(|| {
            nodes
                .iter()
                .map(|(n, _)| (*n, marks.unmanaged(*n)))
                .collect()
        });
        Some(Uncounted {
            host_total: host.total,
            nodes_total,
            host_free: host.free,
            nodes_free,
            unmanaged,
        })
    }

    /// Reads the files of [`Files`] now (the watch does, when a bound node's own
    /// figure falls short).
    pub(crate) fn read(files: &Files) -> Option<Uncounted> {
        let marks = Watermarks::read_from(&files.zoneinfo);
        let host = MemoryRoom::read_file(&files.meminfo, marks.host());
        let nodes: Vec<(u32, Known<MemoryRoom>)> = files
            .nodes
            .iter()
            .map(|(n, path)| (*n, MemoryRoom::read_file(path, marks.node(*n))))
            .collect();
        Uncounted::of(&host, &nodes, &marks)
    }

    /// Free bytes the host counts and no node does.
    pub fn free(&self) -> u64 {
        self.host_free.saturating_sub(self.nodes_free)
    }

    /// Bytes `nodes` may give beyond their meminfo figures: their zones' present −
    /// managed pages, at most [`Self::free`].
    pub fn extra(&self, nodes: impl IntoIterator<Item = u32>) -> u64 {
        match &self.unmanaged {
            Some(m) => nodes
                .into_iter()
                .map(|n| m.get(&n).copied().unwrap_or(0))
                .sum::<u64>()
                .min(self.free()),
            None => self.free(),
        }
    }

    /// Why the figure of `nodes` (named `name`: `node 0`, `nodes 0,4`) is uncertain,
    /// with the numbers.
    pub fn why(&self, name: &str, nodes: &[u32]) -> String {
        let held = match &self.unmanaged {
            Some(_) => format!(
                "{name}'s zones hold {} present but not managed",
                format_size(self.extra_unbounded(nodes))
            ),
            None => "/proc/zoneinfo could not be read".to_string(),
        };
        format!(
            "the nodes' meminfo count {} of the host's {} ({} of {} free); {held} \
             (deferred page initialisation, or reserved): counted as up to {} more that the \
             kernel may add to {name} as memory is taken, an upper bound",
            format_size(self.nodes_total),
            format_size(self.host_total),
            format_size(self.nodes_free),
            format_size(self.host_free),
            format_size(self.extra(nodes.iter().copied())),
        )
    }

    fn extra_unbounded(&self, nodes: &[u32]) -> u64 {
        let m = self.unmanaged.as_ref();
        nodes
            .iter()
            .map(|n| m.and_then(|m| m.get(n).copied()).unwrap_or(0))
            .sum()
    }
}

/// The files the host's figures are compared with the nodes' from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files {
    /// /proc/meminfo.
    pub(crate) meminfo: PathBuf,
    /// Every node with memory and its meminfo.
    pub(crate) nodes: Vec<(u32, PathBuf)>,
    /// /proc/zoneinfo.
    pub(crate) zoneinfo: PathBuf,
}

impl Files {
    /// The kernel's files for the nodes `all`.
    pub(crate) fn of(all: impl IntoIterator<Item = u32>) -> Files {
        let (meminfo, zoneinfo) = MemoryRoom::host_paths();
        Files {
            meminfo,
            nodes: all
                .into_iter()
                .map(|n| (n, MemoryRoom::node_path(n)))
                .collect(),
            zoneinfo,
        }
    }
}

/// Something that changes what the host has without its counters disagreeing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// `Balloon:` of /proc/meminfo: bytes a balloon driver holds for the hypervisor.
    Balloon(u64),
    /// Memory blocks in /sys/devices/system/memory that are offline.
    Offline {
        /// How many.
        blocks: u64,
        /// Their bytes (`block_size_bytes` each).
        bytes: u64,
        /// `auto_online_blocks`: whether hot-added blocks come online by themselves.
        auto_online: String,
    },
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::Balloon(b) => write!(
                f,
                "a balloon holds {} (/proc/meminfo Balloon): the hypervisor may take more or \
                 give it back; the kernel returns a deflate-on-oom balloon's pages only when \
                 it is out of memory, so they are not counted",
                format_size(*b)
            ),
            Hint::Offline {
                blocks,
                bytes,
                auto_online,
            } => write!(
                f,
                "{blocks} memory blocks ({}) are offline (auto_online_blocks: {auto_online}): \
                 the kernel gives them only once they are onlined, so they are not counted",
                format_size(*bytes)
            ),
        }
    }
}

impl Hint {
    /// The hints on this host now; a file that cannot be read gives no hint (these
    /// only explain figures, they never decide).
    pub fn read() -> Vec<Hint> {
        let meminfo = read_text(Path::new("/proc/meminfo")).unwrap_or_default();
        let mut hints: Vec<Hint> = balloon(&meminfo).into_iter().collect();
        hints.extend(offline(Path::new(MEMORY_DIR)));
        hints
    }
}

/// The `Balloon:` line of a meminfo text, bytes, when it is not 0.
pub fn balloon(meminfo: &str) -> Option<Hint> {
    let line = meminfo.lines().find(|l| l.starts_with("Balloon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    (kb > 0).then_some(Hint::Balloon(kb * 1024))
}

/// Offline memory blocks under `dir` (/sys/devices/system/memory), if any.
pub fn offline(dir: &Path) -> Option<Hint> {
    let block = read_text(&dir.join("block_size_bytes")).ok()?;
    let block = u64::from_str_radix(block.trim(), 16).ok()?;
    let blocks = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("memory"))
        .filter(|e| read_text(&e.path().join("state")).is_ok_and(|s| s.trim() == "offline"))
        .count() as u64;
    let auto_online = read_text(&dir.join("auto_online_blocks"))
        .map_or_else(|e| format!("unknown: {e}"), |s| s.trim().to_string());
    (blocks > 0).then_some(Hint::Offline {
        blocks,
        bytes: blocks * block,
        auto_online,
    })
}

#[cfg(test)]
pub(crate) mod tests;
