//! Where a process's memory range is, at a cost bounded whatever its size (DESIGN §12,
//! issue 23): the reading the Prometheus exporter takes of every memory device on
//! every scrape.
//!
//! smaps and numa_maps walk every page table entry of every mapping of the process:
//! ~15 ms per GiB of resident 4 KiB pages here, so 12 s for a 1 TiB VM. This reading
//! walks only where a walk is cheap, and says so when it did not:
//!
//! - **Walk** (exact): one numa_maps read (pages per node, hugetlb pages, policy) plus,
//!   when the process may have THP, a `PAGEMAP_SCAN` of the range for its huge pages,
//!   which reads page table entries only and costs about a fifth of numa_maps. Taken
//!   when the process's resident pages (VmRSS, a counter: numa_maps walks every
//!   mapping of the process, not only the range) are at most `walk_max_pages`, or when
//!   a first small sample predicts that few entries to walk (a THP or hugetlb page is
//!   one entry, untouched memory none).
//! - **Sample** (an estimate with its 95 % interval): move_pages(2) without target
//!   nodes, the kernel's status query, asked of a stratified random sample of the
//!   range's base pages (a node, or -ENOENT for a page not resident), and for the
//!   resident ones among the first `thp_samples` a one-page `PAGEMAP_SCAN` (inside a
//!   THP or not). The cost is the sample's whatever the range's size: 0.3-0.5 µs a
//!   page for move_pages here, 2-5 µs per PAGEMAP_SCAN. The seed is reported and can
//!   be given, so a reading can be drawn again.
//!
//! The exporter calls, per QEMU, with its pid and for each memory device the RAM
//! block's host address and used length (`info ramblock`) and the memdev's requested
//! host-nodes (so numa_maps is read at most once per process, however many devices):
//!
//! ```no_run
//! use hostmem::inspect::{read_placements, ReadOptions};
//! use hostmem::NodeSet;
//! # let (qemu_pid, hva0, used0, hva1, used1) = (1234, 0x7f00_0000_0000, 4 << 30, 0x7f80_0000_0000, 1 << 30);
//! let on0 = ReadOptions::for_nodes(NodeSet::parse("0").unwrap());
//! let on1 = ReadOptions::for_nodes(NodeSet::parse("1").unwrap());
//! for r in read_placements(qemu_pid, [(hva0, used0, &on0), (hva1, used1, &on1)]) {
//!     let Ok(r) = r else { continue }; // the error: that device's series are down
//!     // Export r.resident.value, and beside it r.resident.low / .high (equal to the
//!     // value for a walk) and r.method.name() ("walk" or "sample"); likewise per node
//!     // (r.resident_per_node), r.thp, r.hugetlb (Err: unknown, with the reason) and
//!     // r.share_on_nodes (None: nothing resident or no nodes asked); r.took is what
//!     // the reading cost, r.why why it walked or sampled.
//! }
//! ```
//!
//! [`read_placement`] reads one range.

use std::fs::{self, File};
use std::io;
use std::time::{Duration, Instant, SystemTime};

use super::reading::{Bytes, Choice, Fraction, Method, PlacementReading, ReadOptions};
use super::sample::{stratified, wilson, Rng, Tally, Z95};
use super::Unknown;
use crate::numa::NodeSet;
use crate::sys::{self, PageRegion, VmaInfo, PAGE_IS_HUGE, PAGE_IS_PRESENT};

/// Reads where [start, start+len) of process `pid` is, at a bounded cost (the module
/// documentation says how). Needs ptrace read access to the process (root, or the same
/// user): the kernel's EACCES / EPERM otherwise, ESRCH or ENOENT when it is gone.
///
/// A walk counts the whole VMAs the range overlaps (numa_maps has no finer grain; a
/// memory device is a VMA of its own, or several after a partial mbind); a sample asks
/// pages of the range only. For several ranges of one process (a VM's memory devices)
/// [`read_placements`] reads numa_maps once for all.
pub fn read_placement(
    pid: u32,
    start: u64,
    len: u64,
    opts: &ReadOptions,
) -> io::Result<PlacementReading> {
    let status = ProcStatus::read(pid)?;
    read_one(pid, (start, len), opts, &status, &NumaMapsOnce::default())
}

/// [`read_placement`] of several ranges of process `pid`, each with its options (a
/// memdev's requested nodes): numa_maps, which walks every mapping of the process, is
/// read at most once for all the ranges that are walked. One result per range, in order.
pub fn read_placements<'a>(
    pid: u32,
    ranges: impl IntoIterator<Item = (u64, u64, &'a ReadOptions)>,
) -> Vec<io::Result<PlacementReading>> {
    let status = ProcStatus::read(pid);
    let numa = NumaMapsOnce::default();
    ranges
        .into_iter()
        .map(|(start, len, opts)| match &status {
            Ok(st) => read_one(pid, (start, len), opts, st, &numa),
            Err(e) => Err(sys::copy_io_error(e)),
        })
        .collect()
}

/// A process's numa_maps text, read by the first walk of a batch.
#[derive(Default)]
pub(super) struct NumaMapsOnce(pub std::cell::OnceCell<io::Result<String>>);

fn read_one(
    pid: u32,
    (start, len): (u64, u64),
    opts: &ReadOptions,
    status: &ProcStatus,
    numa: &NumaMapsOnce,
) -> io::Result<PlacementReading> {
    let began = Instant::now();
    let taken_at = SystemTime::now();
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty range"));
    }
    let base = sys::page_size() as u64;
    let end = start.saturating_add(len);
    let ctx = Ctx {
        pid,
        start,
        end,
        base,
        vmas: vmas_of(pid, start, end),
        thp_possible: status.thp_possible,
    };
    let seed = opts.seed.unwrap_or_else(clock_seed);
    // numa_maps walks every mapping of the process: at most its resident pages, as the
    // kernel's counters say without a walk (a THP counts 512 there, 1 in a walk).
    let process_pages = status.rss / base;
    let mut reading = match opts.method {
        Choice::Walk => ctx.walk(opts, "asked for a walk".into(), numa)?,
        Choice::Sample => ctx.sample(opts, seed, "asked for a sample".into())?,
        Choice::Auto if process_pages <= opts.walk_max_pages => ctx.walk(
            opts,
            format!(
                "the process has {process_pages} resident base pages, at most {} walked",
                opts.walk_max_pages
            ),
            numa,
        )?,
        Choice::Auto => {
            let mut hugeness = ctx.hugeness();
            let mut pilot = Tally::default();
            let mut rng = Rng::new(seed);
            let first = (opts.pilot_samples, opts.thp_samples);
            ctx.sample_round(first, &mut rng, &mut hugeness, &mut pilot)?;
            // The range's part of the walk: its resident base pages outside huge pages
            // (a THP or hugetlb page is one entry), at the interval's top, in place of
            // its resident pages in the counter, at the interval's bottom.
            let pages = len / base;
            let n = pilot.samples;
            let small = pilot.resident() - pilot.huge - pilot.hugetlb;
            let (_, small_hi) = wilson(small, n, Z95);
            let (resident_lo, _) = wilson(pilot.resident(), n, Z95);
            let predicted = process_pages.saturating_sub((resident_lo * pages as f64) as u64)
                + (small_hi * pages as f64) as u64
                + pages / 512;
            if predicted <= opts.walk_max_pages {
                ctx.walk(
                    opts,
                    format!(
                        "a {n}-page sample predicts at most {predicted} entries to walk, \
                         at most {} walked",
                        opts.walk_max_pages
                    ),
                    numa,
                )?
            } else {
                let why = format!(
                    "a {n}-page sample predicts {predicted} entries to walk, more than {}",
                    opts.walk_max_pages
                );
                ctx.sample_more(opts, (seed, rng), hugeness, pilot, why)?
            }
        }
    };
    reading.took = began.elapsed();
    reading.taken_at = taken_at;
    Ok(reading)
}

/// A seed from the clock, for readings nobody needs to draw again.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What /proc/PID/status says without a walk: the process's resident bytes (the
/// kernel's counters) and whether it may have THP (`THP_enabled: 0` after
/// prctl(PR_SET_THP_DISABLE): then no THP scan is needed). One case this misses: THP
/// the process got before it turned THP off stay mapped and read as 0 here.
struct ProcStatus {
    rss: u64,
    thp_possible: bool,
}

impl ProcStatus {
    fn read(pid: u32) -> io::Result<ProcStatus> {
        let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
        };
        Ok(ProcStatus {
            rss: field("VmRSS:")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024,
            thp_possible: field("THP_enabled:").as_deref() != Some("0"),
        })
    }
}

/// The VMAs overlapping [start, end) (PROCMAP_QUERY: no page table walk), or why they
/// are unknown (ENOTTY before Linux 6.11).
pub(super) fn vmas_of(pid: u32, start: u64, end: u64) -> Result<Vec<VmaInfo>, Unknown> {
    let what = format!("/proc/{pid}/maps PROCMAP_QUERY");
    let fail = |e: io::Error| Unknown {
        what: what.clone(),
        reason: sys::strerror(&e),
    };
    let maps = File::open(format!("/proc/{pid}/maps")).map_err(fail)?;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        match sys::procmap_query(&maps, at).map_err(fail)? {
            Some(v) if v.start < end => {
                at = v.end;
                out.push(v);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// How a sample tells whether a resident page outside hugetlb VMAs is a THP's.
enum Hugeness {
    /// The process cannot have THP.
    Never,
    /// One-page PAGEMAP_SCAN on the process's pagemap.
    Scan(File),
    /// No way to tell: no PAGEMAP_SCAN, pagemap unreadable, or the hugetlb VMAs are
    /// unknown (PAGE_IS_HUGE is either).
    Unknown(Unknown),
}

/// What one reading works on.
pub(super) struct Ctx {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The base page size.
    pub base: u64,
    pub vmas: Result<Vec<VmaInfo>, Unknown>,
    pub thp_possible: bool,
}

impl Ctx {
    pub(super) fn pagemap(&self) -> Result<File, Unknown> {
        let path = format!("/proc/{}/pagemap", self.pid);
        File::open(&path).map_err(|e| Unknown {
            what: path,
            reason: sys::strerror(&e),
        })
    }

    fn hugeness(&self) -> Hugeness {
        if !self.thp_possible {
            return Hugeness::Never;
        }
        if let Err(u) = &self.vmas {
            return Hugeness::Unknown(u.clone());
        }
        match self.pagemap() {
            Ok(f) => Hugeness::Scan(f),
            Err(u) => Hugeness::Unknown(u),
        }
    }

    /// Whether `addr` is in a hugetlb VMA of the range; None when the VMAs are unknown.
    fn in_hugetlb(&self, addr: u64) -> Option<bool> {
        let vmas = self.vmas.as_ref().ok()?;
        Some(
            vmas.iter()
                .any(|v| v.start <= addr && addr < v.end && v.page_size > self.base),
        )
    }

    /// Asks `n` more pages (one stratified pass over the range) into `tally`, and
    /// whether they are THP while fewer than `thp_limit` pages were drawn.
    fn sample_round(
        &self,
        (n, thp_limit): (u64, u64),
        rng: &mut Rng,
        hugeness: &mut Hugeness,
        tally: &mut Tally,
    ) -> io::Result<()> {
        let pages = (self.end - self.start) / self.base;
        let addrs: Vec<u64> = stratified(pages, n, rng)
            .into_iter()
            .map(|p| self.start + p * self.base)
            .collect();
        let mut one = [PageRegion::default()];
        for batch in addrs.chunks(crate::remote::PAGES_PER_CALL) {
            let status = sys::move_pages_of(self.pid, batch, None, false)?;
            for (&addr, &s) in batch.iter().zip(&status) {
                let asking = matches!(hugeness, Hugeness::Scan(_)) && tally.samples < thp_limit;
                tally.add_status(s);
                tally.thp_samples += u64::from(asking);
                if s < 0 {
                    continue;
                }
                if self.in_hugetlb(addr) == Some(true) {
                    tally.hugetlb += 1;
                } else if let (true, Hugeness::Scan(f)) = (asking, &*hugeness) {
                    let mask = PAGE_IS_PRESENT | PAGE_IS_HUGE;
                    match sys::pagemap_scan(f, addr, addr + self.base, mask, mask, &mut one) {
                        Ok((found, _)) => tally.huge += u64::from(found > 0),
                        Err(e) => {
                            *hugeness = Hugeness::Unknown(Unknown {
                                what: format!("/proc/{}/pagemap PAGEMAP_SCAN", self.pid),
                                reason: sys::strerror(&e),
                            })
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sample(&self, opts: &ReadOptions, seed: u64, why: String) -> io::Result<PlacementReading> {
        let hugeness = self.hugeness();
        self.sample_more(
            opts,
            (seed, Rng::new(seed)),
            hugeness,
            Tally::default(),
            why,
        )
    }

    /// Samples in rounds until the intervals are narrow enough or the budget is spent.
    fn sample_more(
        &self,
        opts: &ReadOptions,
        (seed, mut rng): (u64, Rng),
        mut hugeness: Hugeness,
        mut tally: Tally,
        why: String,
    ) -> io::Result<PlacementReading> {
        let max = opts.max_samples.max(1);
        while tally.samples < max && !narrow_enough(&tally, &opts.nodes, opts.target_half_width) {
            let n = opts.round_samples.max(1).min(max - tally.samples);
            self.sample_round((n, opts.thp_samples), &mut rng, &mut hugeness, &mut tally)?;
        }
        Ok(self.reading_of(opts, (seed, why), &tally, &hugeness))
    }

    fn reading_of(
        &self,
        opts: &ReadOptions,
        (seed, why): (u64, String),
        t: &Tally,
        hugeness: &Hugeness,
    ) -> PlacementReading {
        let len = self.end - self.start;
        let n = t.samples;
        let resident = t.resident();
        let all_hugetlb = self
            .vmas
            .as_ref()
            .is_ok_and(|v| v.iter().all(|m| m.page_size > self.base));
        let thp = match hugeness {
            // THP cannot be in a hugetlb VMA.
            _ if all_hugetlb => Ok(Bytes::exact(0)),
            Hugeness::Never => Ok(Bytes::exact(0)),
            Hugeness::Scan(_) => Ok(Bytes::estimate(t.huge, t.thp_samples, len)),
            Hugeness::Unknown(u) => Err(u.clone()),
        };
        let hugetlb = match &self.vmas {
            Ok(_) => Ok(Bytes::estimate(t.hugetlb, n, len)),
            Err(u) => Err(u.clone()),
        };
        PlacementReading {
            pid: self.pid,
            start: self.start,
            len,
            method: Method::Sample {
                samples: n,
                seed,
                confidence: 0.95,
            },
            why,
            page_size: self.first_page_size(),
            resident: Bytes::estimate(resident, n, len),
            resident_per_node: t
                .per_node
                .iter()
                .map(|(&node, &k)| (node, Bytes::estimate(k, n, len)))
                .collect(),
            thp,
            hugetlb,
            nodes: opts.nodes.clone(),
            share_on_nodes: share(t, &opts.nodes),
            policy: Err(Unknown {
                what: format!("/proc/{}/numa_maps policy", self.pid),
                reason: "not read: the range was sampled, and only numa_maps (a walk) \
                         gives another process's policy"
                    .into(),
            }),
            took: Duration::ZERO,
            taken_at: SystemTime::UNIX_EPOCH,
        }
    }

    pub(super) fn first_page_size(&self) -> u64 {
        match &self.vmas {
            Ok(v) => v.first().map_or(self.base, |m| m.page_size),
            Err(_) => self.base,
        }
    }
}

/// Whether the sample's intervals are within `half` of their estimates.
fn narrow_enough(t: &Tally, nodes: &NodeSet, half: f64) -> bool {
    if t.samples == 0 {
        return false;
    }
    let (lo, hi) = wilson(t.resident(), t.samples, Z95);
    let resident_ok = (hi - lo) / 2.0 <= half;
    let share_ok = share(t, nodes).is_none_or(|s| (s.high - s.low) / 2.0 <= half);
    resident_ok && share_ok
}

/// on / resident, when nodes were asked and something is resident.
pub(super) fn share_of(on: u64, resident: u64, nodes: &NodeSet) -> Option<f64> {
    (!nodes.is_empty() && resident > 0).then(|| on as f64 / resident as f64)
}

/// The share of the sampled resident pages on `nodes`, with its interval.
fn share(t: &Tally, nodes: &NodeSet) -> Option<Fraction> {
    let resident = t.resident();
    let on = t.resident_on(|n| nodes.contains(n));
    let value = share_of(on, resident, nodes)?;
    let (low, high) = wilson(on, resident, Z95);
    Some(Fraction { value, low, high })
}
