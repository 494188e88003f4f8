//! The types of a placement reading (`estimate.rs` makes them): what to read, how it
//! was read, and each figure with the interval it lies in, so an exporter can show the
//! error beside the figure.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::sample::{wilson, Z95};
use super::{MemPolicy, Unknown};
use crate::numa::NodeSet;

/// How to read (defaults: the exporter's).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    /// Nodes whose share of the resident pages is wanted (a memdev's requested
    /// host-nodes); empty: no share.
    pub nodes: NodeSet,
    /// Walk when the walk visits at most this many resident base pages (page table
    /// entries). Default 2^19 (2 GiB of 4 KiB pages, ~30 ms here): about what the
    /// largest sample costs.
    pub walk_max_pages: u64,
    /// Pages of the first sample, which also decides whether a walk is cheap.
    pub pilot_samples: u64,
    /// Pages added per round until the intervals are narrow enough.
    pub round_samples: u64,
    /// Most pages asked in all: the bound on a sample's cost.
    pub max_samples: u64,
    /// Pages of the sample whose resident pages are also asked whether they are in a
    /// THP (a one-page PAGEMAP_SCAN: 2-5 µs here, several times move_pages' cost per
    /// page, so only the first ones): THP bytes carry this sample size's interval.
    pub thp_samples: u64,
    /// Sampling stops once the 95 % intervals of the resident fraction and of the share
    /// reach at most this far on either side of the estimate (0.005: ±0.5 %).
    pub target_half_width: f64,
    /// Seed of the sample; None: one from the clock (scrapes then err independently).
    pub seed: Option<u64>,
    /// Force a method instead of choosing (tests and the bench compare them).
    pub method: Choice,
}

/// Which method to use (a background walk may join them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// Walk where a walk is cheap, else sample.
    Auto,
    /// Always walk (exact; the cost grows with the range).
    Walk,
    /// Always sample (skipping the pilot's walk decision).
    Sample,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            nodes: NodeSet::new(),
            walk_max_pages: 1 << 19,
            pilot_samples: 4096,
            round_samples: 16384,
            max_samples: 1 << 17,
            thp_samples: 8192,
            target_half_width: 0.005,
            seed: None,
            method: Choice::Auto,
        }
    }
}

impl ReadOptions {
    /// The defaults, with the share of resident pages on `nodes` asked for.
    pub fn for_nodes(nodes: NodeSet) -> ReadOptions {
        ReadOptions {
            nodes,
            ..Default::default()
        }
    }
}

/// How a reading was made: exported beside every figure, never hidden.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Method {
    /// Every page counted at the reading's time: the figures are exact.
    Walk,
    /// A stratified random sample of base pages: figures are estimates with a
    /// `confidence` interval (0.95).
    Sample {
        /// Pages asked.
        samples: u64,
        /// The seed that draws the same pages again.
        seed: u64,
        /// Confidence of the intervals.
        confidence: f64,
    },
}

impl Method {
    /// `walk` or `sample`, for a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Walk => "walk",
            Method::Sample { .. } => "sample",
        }
    }
}

/// A byte count and the interval it lies in (low == value == high when exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bytes {
    /// The count, or the estimate.
    pub value: u64,
    /// Lower end of the interval.
    pub low: u64,
    /// Upper end of the interval.
    pub high: u64,
}

impl Bytes {
    /// A count without error.
    pub fn exact(v: u64) -> Bytes {
        Bytes {
            value: v,
            low: v,
            high: v,
        }
    }

    /// Whether `v` lies in the interval.
    pub fn contains(&self, v: u64) -> bool {
        self.low <= v && v <= self.high
    }

    /// `k` of `n` sampled pages, scaled to a range of `len` bytes.
    pub(super) fn estimate(k: u64, n: u64, len: u64) -> Bytes {
        let (lo, hi) = wilson(k, n, Z95);
        let len = len as f64;
        Bytes {
            value: (k as f64 / n.max(1) as f64 * len).round() as u64,
            low: (lo * len).floor() as u64,
            high: (hi * len).ceil() as u64,
        }
    }
}

/// A fraction and the interval it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fraction {
    /// The fraction, or the estimate (0..=1).
    pub value: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

impl Fraction {
    /// Whether `v` lies in the interval.
    pub fn contains(&self, v: f64) -> bool {
        self.low <= v && v <= self.high
    }
}

/// One reading of a range's placement. Every figure says how it was obtained
/// (`method`); what could not be read is [`Unknown`] with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementReading {
    /// The process.
    pub pid: u32,
    /// The range's first address in the process.
    pub start: u64,
    /// The range's length.
    pub len: u64,
    /// Walk or sample.
    pub method: Method,
    /// Why this method (`1048576 base pages, at most 524288 walked`).
    pub why: String,
    /// The kernel's page size of the range's first VMA (hugetlb: the huge page size).
    pub page_size: u64,
    /// Resident bytes (hugetlb included).
    pub resident: Bytes,
    /// Resident bytes per node.
    pub resident_per_node: BTreeMap<u32, Bytes>,
    /// Bytes in transparent huge pages.
    pub thp: Result<Bytes, Unknown>,
    /// Bytes in hugetlb pages.
    pub hugetlb: Result<Bytes, Unknown>,
    /// The nodes the share is of.
    pub nodes: NodeSet,
    /// Share of the resident pages on `nodes`; None when no nodes were asked or
    /// nothing is resident.
    pub share_on_nodes: Option<Fraction>,
    /// The policy numa_maps prints for the first VMA; a sample reads no numa_maps.
    pub policy: Result<MemPolicy, Unknown>,
    /// What the reading cost.
    pub took: Duration,
    /// When it was taken.
    pub taken_at: SystemTime,
}
