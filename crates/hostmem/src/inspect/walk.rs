//! The exact reading of a range's placement in one walk: numa_maps (pages per node,
//! hugetlb pages, the policy) and, when the process may have THP, a PAGEMAP_SCAN of the
//! range's VMAs for its huge pages. smaps is not read: numa_maps already gives
//! the resident pages (the sum over nodes), and smaps' page walk would double the cost.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use super::estimate::{share_of, Ctx, NumaMapsOnce};
use super::procfs::{numa_lines, parse_policy, NumaLine};
use super::reading::{Bytes, Fraction, Method, PlacementReading, ReadOptions};
use super::Unknown;
use crate::sys::{self, PageRegion, PAGE_IS_HUGE, PAGE_IS_PRESENT};

/// Runs asked per PAGEMAP_SCAN call (4 in unit tests, so one test's few THP runs
/// need several calls).
const RUNS_PER_CALL: usize = if cfg!(test) { 4 } else { 512 };

/// The numa_maps lines of the range, summed in bytes (each line in its own page size).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Walked {
    pub vmas: usize,
    pub per_node: BTreeMap<u32, u64>,
    pub hugetlb: u64,
    pub policy: String,
}

/// Sums the numa_maps `lines` (`base`: the page size of a line that prints none).
pub(super) fn sum_lines(lines: impl Iterator<Item = NumaLine>, base: u64) -> Walked {
    let mut w = Walked::default();
    for line in lines {
        if w.vmas == 0 {
            w.policy = line.policy.clone();
        }
        w.vmas += 1;
        let size = if line.page_size == 0 {
            base
        } else {
            line.page_size
        };
        for (&node, &pages) in &line.pages {
            *w.per_node.entry(node).or_default() += pages * size;
            if line.hugetlb {
                w.hugetlb += pages * size;
            }
        }
    }
    w
}

impl Ctx {
    /// The lines of the VMAs the range overlaps (by their starts, when PROCMAP_QUERY
    /// listed them), else of the VMAs that start inside it.
    fn range_lines<'a>(&self, text: &'a str) -> Box<dyn Iterator<Item = NumaLine> + 'a> {
        match &self.vmas {
            Ok(vmas) => {
                let starts: BTreeSet<u64> = vmas.iter().map(|v| v.start).collect();
                Box::new(numa_lines(text, 0, u64::MAX).filter(move |l| starts.contains(&l.start)))
            }
            Err(_) => Box::new(numa_lines(text, self.start, self.end)),
        }
    }

    /// Bytes in present huge pages (THP and hugetlb alike) of the range's VMAs.
    fn huge_bytes(&self) -> Result<u64, Unknown> {
        let f = self.pagemap()?;
        let (mut at, end) = match &self.vmas {
            Ok(v) if !v.is_empty() => {
                (v[0].start.min(self.start), v[v.len() - 1].end.max(self.end))
            }
            _ => (self.start, self.end),
        };
        let mut runs = vec![PageRegion::default(); RUNS_PER_CALL];
        let mask = PAGE_IS_PRESENT | PAGE_IS_HUGE;
        let mut bytes = 0;
        while at < end {
            let (n, walk_end) =
                sys::pagemap_scan(&f, at, end, mask, mask, &mut runs).map_err(|e| Unknown {
                    what: format!("/proc/{}/pagemap PAGEMAP_SCAN", self.pid),
                    reason: sys::strerror(&e),
                })?;
            bytes += runs[..n].iter().map(|r| r.end - r.start).sum::<u64>();
            if walk_end <= at {
                break;
            }
            at = walk_end;
        }
        Ok(bytes)
    }

    /// One numa_maps walk, unless `numa` holds the process's already (a batch), and
    /// the THP scan of the range beside it on a second thread.
    pub(super) fn walk(
        &self,
        opts: &ReadOptions,
        why: String,
        numa: &NumaMapsOnce,
    ) -> io::Result<PlacementReading> {
        let path = format!("/proc/{}/numa_maps", self.pid);
        let read = || fs::read_to_string(&path);
        let huge = match (self.thp_possible, numa.0.get()) {
            (false, _) => None,
            (true, Some(_)) => Some(self.huge_bytes()),
            (true, None) => Some(std::thread::scope(|s| {
                let scan = s.spawn(|| self.huge_bytes());
                numa.0.get_or_init(read);
                scan.join().unwrap_or_else(|_| {
                    Err(Unknown {
                        what: "PAGEMAP_SCAN".into(),
                        reason: "the scanning thread panicked".into(),
                    })
                })
            })),
        };
        let text = numa
            .0
            .get_or_init(read)
            .as_ref()
            .map_err(sys::copy_io_error)?;
        let w = sum_lines(self.range_lines(text), self.base);
        if w.vmas == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "process {} maps nothing at {:#x}..{:#x}",
                    self.pid, self.start, self.end
                ),
            ));
        }
        let resident: u64 = w.per_node.values().sum();
        let thp = match huge {
            None => Ok(Bytes::exact(0)),
            Some(h) => h.map(|h| Bytes::exact(h.saturating_sub(w.hugetlb))),
        };
        let on: u64 = w
            .per_node
            .iter()
            .filter(|(&n, _)| opts.nodes.contains(n))
            .map(|(_, &b)| b)
            .sum();
        let share_on_nodes = share_of(on, resident, &opts.nodes).map(|v| Fraction {
            value: v,
            low: v,
            high: v,
        });
        let policy = parse_policy(&w.policy).ok_or_else(|| Unknown {
            what: format!("{path} policy"),
            reason: format!("unrecognised policy {:?}", w.policy),
        });
        Ok(PlacementReading {
            pid: self.pid,
            start: self.start,
            len: self.end - self.start,
            method: Method::Walk,
            why,
            page_size: self.first_page_size(),
            resident: Bytes::exact(resident),
            resident_per_node: w
                .per_node
                .iter()
                .map(|(&n, &b)| (n, Bytes::exact(b)))
                .collect(),
            thp,
            hugetlb: Ok(Bytes::exact(w.hugetlb)),
            nodes: opts.nodes.clone(),
            share_on_nodes,
            policy,
            took: Duration::ZERO,
            taken_at: SystemTime::UNIX_EPOCH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::estimate::vmas_of;
    use super::super::procfs::{parse_numa_line, parse_smaps, Smaps};
    use super::*;
    use crate::sys::{advice, RawMapping};

    #[test]
    fn the_thp_scan_goes_on_past_a_full_buffer_and_counts_every_run() {
        // Every other 2 MiB block advised MADV_HUGEPAGE, then all written: with THP on
        // `madvise` 16 THP runs apart, four times RUNS_PER_CALL.
        let huge = 2usize << 20;
        let map = RawMapping::map(66 << 20, None, 0, Default::default()).unwrap();
        let first = map.addr().div_ceil(huge) * huge - map.addr();
        for b in (0..32).step_by(2) {
            map.madvise(first + b * huge, huge, advice::HUGEPAGE)
                .unwrap();
        }
        map.populate(first, 32 * huge, true).unwrap();
        let (start, end) = (
            (map.addr() + first) as u64,
            (map.addr() + first + 32 * huge) as u64,
        );
        let mut sm = Smaps::default();
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        parse_smaps(&smaps, start, end, &mut sm);
        if sm.thp < 4 * huge as u64 {
            eprintln!(
                "only {} bytes of THP (THP off or no huge pages): nothing to test",
                sm.thp
            );
            return;
        }
        let pid = std::process::id();
        let ctx = Ctx {
            pid,
            start,
            end,
            base: crate::sys::page_size() as u64,
            vmas: vmas_of(pid, start, end),
            thp_possible: true,
        };
        assert_eq!(ctx.huge_bytes().unwrap(), sm.thp, "smaps AnonHugePages");
    }

    #[test]
    fn lines_are_summed_in_bytes_each_in_its_own_page_size() {
        let text = "\
7f0000000000 bind:0-1 anon=4 dirty=4 N0=3 N1=1 kernelpagesize_kB=4
7f0000400000 bind:1 huge dirty=2 N1=2 kernelpagesize_kB=2048
7f0000800000 default
";
        let w = sum_lines(text.lines().filter_map(parse_numa_line), 4096);
        assert_eq!(w.vmas, 3);
        assert_eq!(w.policy, "bind:0-1", "the first VMA's");
        assert_eq!(w.per_node, [(0, 3 * 4096), (1, 4096 + (4 << 20))].into());
        assert_eq!(w.hugetlb, 4 << 20);
    }
}
