//! One memory device's placement, read for a scrape: the single call a scrape's cost
//! depends on.
//!
//! Why one function: a scrape must stay cheap for VMs of hundreds of GiB on 4 KiB
//! pages (issue 23). The library's `inspect::read_placement` walks numa_maps only where
//! a walk is cheap (small or huge-page ranges) and otherwise asks move_pages(2) the
//! node of a random sample of pages, with a 95 % interval; this module turns its
//! reading into the exporter's figures, the method and the error bound beside them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use hostmem::inspect::{read_placements, Bytes, PlacementReading, ReadOptions};
use hostmem::NodeSet;

use crate::vm::ramblock::RamBlock;

/// Where one memory device's pages are, with how far the figures can be off.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Resident bytes, hugetlb pages included.
    pub resident: u64,
    /// Transparent huge page bytes; None when the kernel could not say.
    pub thp: Option<u64>,
    /// hugetlbfs bytes; None when the kernel could not say.
    pub hugetlb: Option<u64>,
    /// Resident bytes per host node.
    pub per_node: BTreeMap<u32, u64>,
    /// Share of the resident bytes on the requested nodes; None with no nodes
    /// requested or nothing resident.
    pub share: Option<f64>,
    /// `walk` (exact) or `sample` (an estimate).
    pub method: &'static str,
    /// Half-width of the 95 % interval of the share (of the resident fraction of the
    /// range when there is no share); 0 for a walk.
    pub error: f64,
    /// Seconds between the reading and now (0: read during this scrape).
    pub age_seconds: f64,
    /// What the reading cost, seconds.
    pub seconds: f64,
}

/// Reads where `block` of process `pid` is now, with the share on `nodes`.
pub fn read(pid: u32, block: &RamBlock, nodes: &[u32]) -> std::io::Result<Placement> {
    let mut all = read_all(pid, &[(block, nodes)]);
    all.pop()
        .unwrap_or_else(|| Err(std::io::ErrorKind::InvalidData.into()))
}

/// Reads where each of a process's blocks is now, each with the share on its nodes, in
/// one pass: numa_maps (which walks the whole process) at most once for all of a VM's
/// memory devices, so a VM with many memdevs costs one walk, not one per memdev.
pub fn read_all(pid: u32, blocks: &[(&RamBlock, &[u32])]) -> Vec<std::io::Result<Placement>> {
    let opts: Vec<ReadOptions> = blocks
        .iter()
        .map(|(_, nodes)| ReadOptions::for_nodes(nodes.iter().copied().collect::<NodeSet>()))
        .collect();
    let ranges = blocks
        .iter()
        .zip(&opts)
        .map(|((b, _), o)| (b.hva, b.used, o));
    let now = SystemTime::now();
    read_placements(pid, ranges)
        .into_iter()
        .map(|r| r.map(|r| from_reading(&r, now)))
        .collect()
}

/// The larger distance from the estimate to an end of its interval.
fn half_width(value: f64, low: f64, high: f64) -> f64 {
    (value - low).max(high - value).max(0.0)
}

fn from_reading(r: &PlacementReading, now: SystemTime) -> Placement {
    let bytes = |b: &Bytes| b.value;
    let error = match &r.share_on_nodes {
        Some(f) => half_width(f.value, f.low, f.high),
        None => {
            let len = r.len.max(1) as f64;
            let b = r.resident;
            half_width(b.value as f64, b.low as f64, b.high as f64) / len
        }
    };
    Placement {
        resident: r.resident.value,
        thp: r.thp.as_ref().ok().map(bytes),
        hugetlb: r.hugetlb.as_ref().ok().map(bytes),
        per_node: r
            .resident_per_node
            .iter()
            .map(|(n, b)| (*n, b.value))
            .collect(),
        share: r.share_on_nodes.map(|f| f.value),
        method: r.method.name(),
        error,
        age_seconds: now
            .duration_since(r.taken_at)
            .map_or(0.0, |d| d.as_secs_f64()),
        seconds: r.took.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_width_is_the_farther_end() {
        assert_eq!(half_width(0.5, 0.5, 0.5), 0.0, "a walk: exact");
        assert!((half_width(0.5, 0.49, 0.52) - 0.02).abs() < 1e-12);
        assert!((half_width(0.0, 0.0, 0.003) - 0.003).abs() < 1e-12);
    }

    #[test]
    fn a_walk_of_this_process_is_exact_and_counts_the_touched_pages() {
        // 64 pages of our own, 16 touched: a walk (small), exact, all resident on the
        // node numa_maps names; the figures are the library's, the shape is ours.
        let page = 4096usize;
        let mut v = vec![0u8; 64 * page];
        for i in 0..16 {
            v[i * page] = 1;
        }
        let start = v.as_ptr() as u64;
        let block = RamBlock {
            name: "t".into(),
            page_size: page as u64,
            used: (64 * page) as u64,
            total: (64 * page) as u64,
            hva: start,
            read_only: false,
        };
        let p = read(std::process::id(), &block, &[]).unwrap();
        assert_eq!(p.method, "walk");
        assert_eq!(p.error, 0.0);
        assert_eq!(p.share, None, "no nodes asked");
        assert_eq!(p.per_node.values().sum::<u64>(), p.resident);
        assert!(p.resident >= 16 * page as u64, "{p:?}");
        let nodes: Vec<u32> = p.per_node.keys().copied().collect();
        let with = read(std::process::id(), &block, &nodes).unwrap();
        assert_eq!(with.share, Some(1.0), "{with:?}");
        drop(v);
    }
}
