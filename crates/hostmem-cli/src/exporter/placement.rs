//! One memory device's placement, read for a scrape: the single call a scrape's cost
//! depends on (two page-table walks of QEMU's smaps and numa_maps today).
//!
//! Why one function: a scrape must stay cheap for VMs of hundreds of GiB on 4 KiB
//! pages (issue 23), and the bounded estimate (one walk where cheap, else a sample of
//! pages' move_pages status) is being built in the library. Until it is there,
//! [`read`] is the full kernel read `hostmem vm` makes, exported as exact (error 0,
//! age 0); switching to the estimate changes this function only, and the exporter
//! already carries its method, error bound and age beside the figures.

use std::collections::BTreeMap;

use hostmem::{KernelView, Process};

use crate::vm::error::VmError;
use crate::vm::ramblock::RamBlock;

/// How a placement figure was obtained (the `method` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A full read of smaps and numa_maps over the range: exact at the moment read.
    Walk,
}

impl Method {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Method::Walk => "walk",
        }
    }
}

/// Where one memory device's pages are, with how far the figure can be off.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Resident bytes, hugetlb pages included (smaps).
    pub resident: u64,
    /// Transparent huge page bytes (smaps AnonHugePages + ShmemPmdMapped + FilePmdMapped).
    pub thp: u64,
    /// hugetlbfs bytes (smaps Private_Hugetlb + Shared_Hugetlb).
    pub hugetlb: u64,
    /// VmFlags has `hg`: the range is madvised for THP (QEMU does so for every RAM block).
    pub thp_advised: bool,
    /// Resident bytes per host node (numa_maps); None when numa_maps cannot be read.
    pub per_node: Option<BTreeMap<u32, u64>>,
    /// How the figures were obtained.
    pub method: Method,
    /// Bound of the absolute error of the share on the requested nodes (0..1; 0: exact).
    pub share_error: f64,
    /// Seconds between the reading and this scrape (0: read during the scrape).
    pub age_seconds: f64,
}

impl Placement {
    /// The share of the resident bytes that is on `nodes` (0..1); None when nothing is
    /// resident, no node is requested, or the nodes are unknown.
    pub fn share_on(&self, nodes: &[u32]) -> Option<f64> {
        let per_node = self.per_node.as_ref()?;
        let total: u64 = per_node.values().sum();
        if total == 0 || nodes.is_empty() {
            return None;
        }
        let on: u64 = nodes.iter().filter_map(|n| per_node.get(n)).sum();
        Some(on as f64 / total as f64)
    }
}

/// Reads the placement of `block` in QEMU's process now.
pub fn read(process: &Process, block: &RamBlock) -> Result<Placement, VmError> {
    let view = process.region(block.hva, block.used)?.inspect()?;
    Ok(from_view(&view))
}

fn from_view(v: &KernelView) -> Placement {
    Placement {
        resident: v.resident,
        thp: v.thp,
        hugetlb: v.hugetlb,
        thp_advised: v.has_flag("hg"),
        per_node: v.bytes_per_node(),
        method: Method::Walk,
        share_error: 0.0,
        age_seconds: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(per_node: &[(u32, u64)]) -> Placement {
        Placement {
            resident: per_node.iter().map(|p| p.1).sum(),
            thp: 0,
            hugetlb: 0,
            thp_advised: false,
            per_node: Some(per_node.iter().copied().collect()),
            method: Method::Walk,
            share_error: 0.0,
            age_seconds: 0.0,
        }
    }

    #[test]
    fn share_counts_only_the_requested_nodes() {
        let p = placed(&[(0, 3 << 20), (1, 1 << 20)]);
        assert_eq!(p.share_on(&[0]), Some(0.75));
        assert_eq!(p.share_on(&[1]), Some(0.25));
        assert_eq!(p.share_on(&[0, 1]), Some(1.0));
        assert_eq!(p.share_on(&[2]), Some(0.0));
        assert_eq!(p.share_on(&[]), None, "no request, no share");
        assert_eq!(placed(&[]).share_on(&[0]), None, "nothing resident");
        let unknown = Placement {
            per_node: None,
            ..placed(&[(0, 1)])
        };
        assert_eq!(unknown.share_on(&[0]), None);
    }
}
