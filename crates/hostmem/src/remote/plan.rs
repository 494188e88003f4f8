//! The decisions of a move apart from its system calls: which node each page goes to,
//! how a range is cut into move_pages(2) windows, what the first look at the range
//! counts, and what the kernel's answers to a move count as. Kept free of the process
//! so each decision can be checked against made-up page statuses.

use std::collections::BTreeMap;

use super::error::RemoteError;
use super::report::RemoteRebindReport;
use super::PAGES_PER_CALL;
use crate::prealloc::Progress;

/// Transparent huge pages are 2 MiB on x86-64 and arm64 with 4 KiB base pages; an
/// interleave stripe of this size keeps each one whole.
pub(super) const THP_STRIPE: u64 = 2 << 20;

/// The page size a move works in: the mapping's (smaps' KernelPageSize), or the
/// system's where smaps gave none.
pub(super) fn move_page_size(mapping: u64, system: u64) -> u64 {
    if mapping == 0 {
        system
    } else {
        mapping
    }
}

/// Where each page of a range goes: round-robin over the nodes by address, like
/// MPOL_INTERLEAVE, in stripes of one page or, where the range holds transparent
/// huge pages, of [`THP_STRIPE`] so a huge page is not torn between nodes.
pub(super) struct Stripes {
    start: u64,
    page: u64,
    /// Pages per stripe.
    stripe: u64,
    nodes: Vec<u32>,
}

impl Stripes {
    /// Stripes over `nodes` (not empty) for a range at `start` of `page`-sized pages.
    pub(super) fn new(start: u64, page: u64, thp: bool, nodes: Vec<u32>) -> Stripes {
        let stripe = if thp { THP_STRIPE.max(page) } else { page } / page;
        Stripes {
            start,
            page,
            stripe,
            nodes,
        }
    }

    /// The node the page at `addr` goes to, as move_pages(2) takes and reports nodes.
    pub(super) fn target_of(&self, addr: u64) -> i32 {
        let i = (addr - self.start) / self.page;
        self.nodes[(i / self.stripe) as usize % self.nodes.len()] as i32
    }
}

/// Pages per move_pages(2) call: [`PAGES_PER_CALL`] base pages' worth of bytes, at
/// least one page (a 1 GiB huge page is bigger than the whole window).
pub(super) fn window_pages(page: u64) -> u64 {
    (PAGES_PER_CALL as u64 * 4096 / page).max(1)
}

/// Calls `f` with the addresses of each window of `window` pages of [start, start+len)
/// in order, until `f` says stop (false) or fails. No per-page list of the whole
/// range is ever held (64 GiB of 4 KiB pages would be 16 M entries).
pub(super) fn for_each_window(
    start: u64,
    len: u64,
    page: u64,
    window: u64,
    f: &mut dyn FnMut(Vec<u64>) -> Result<bool, RemoteError>,
) -> Result<(), RemoteError> {
    let pages = len / page;
    let mut first = 0;
    while first < pages {
        let n = window.min(pages - first);
        let addrs = (first..first + n).map(|i| start + i * page).collect();
        if !f(addrs)? {
            break;
        }
        first += n;
    }
    Ok(())
}

/// The first look at the range, before anything moves: resident pages, those already
/// on their node, and how many pages each node would receive.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Survey {
    pub(super) resident: u64,
    pub(super) already_placed: u64,
    pub(super) headed: BTreeMap<u32, u64>,
}

impl Survey {
    /// Counts one window: `now` is move_pages' status of each of `addrs` (a node, or
    /// a negative errno for a page that is not resident).
    pub(super) fn count(&mut self, stripes: &Stripes, addrs: &[u64], now: &[i32]) {
        for (&addr, &now) in addrs.iter().zip(now) {
            if now < 0 {
                continue; // not resident: nothing to move
            }
            self.resident += 1;
            let to = stripes.target_of(addr);
            if now == to {
                self.already_placed += 1;
            } else {
                *self.headed.entry(to as u32).or_default() += 1;
            }
        }
    }

    /// Pages that will be asked to move.
    pub(super) fn planned(&self) -> u64 {
        self.headed.values().sum()
    }
}

/// One move_pages(2) call's arguments: the pages to move and, index for index, the
/// node each goes to. Kept as the two lists the call takes, so what is tested is what
/// the kernel is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct MoveBatch {
    /// The pages' addresses, in the process's address space.
    pub(super) addrs: Vec<u64>,
    /// The target node of each page.
    pub(super) nodes: Vec<i32>,
}

impl MoveBatch {
    /// Pages in the batch.
    pub(super) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether nothing is to move.
    pub(super) fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// The pages of a window to move now, with their targets: resident and not on their
/// node (asked again at move time: the process runs meanwhile).
pub(super) fn to_move(stripes: &Stripes, addrs: &[u64], now: &[i32]) -> MoveBatch {
    let mut batch = MoveBatch::default();
    for (&a, &n) in addrs.iter().zip(now) {
        let to = stripes.target_of(a);
        if n >= 0 && n != to {
            batch.addrs.push(a);
            batch.nodes.push(to);
        }
    }
    batch
}

/// Counts move_pages' answer `status` for `batch` into `report`. A tail page of a huge
/// page moved with its head reports EBUSY or its old node, so a page whose status is
/// not its target is asked about again (`ask_again`, told the pages moved so far)
/// before it is called failed; a
/// page that stayed is counted by its errno (EAGAIN when the status was a node).
/// The batch counts as done in `progress`.
pub(super) fn settle(
    report: &mut RemoteRebindReport,
    batch: &MoveBatch,
    status: Vec<i32>,
    ask_again: impl FnOnce(&[u64], u64) -> Result<Vec<i32>, RemoteError>,
    progress: &Progress,
) -> Result<(), RemoteError> {
    let mut unsure: Vec<(u64, i32, i32)> = Vec::new();
    for ((&addr, &to), s) in batch.addrs.iter().zip(&batch.nodes).zip(status) {
        if s == to {
            report.moved += 1;
            *report.moved_per_node.entry(to as u32).or_default() += 1;
        } else {
            unsure.push((addr, to, s));
        }
    }
    if !unsure.is_empty() {
        let a: Vec<u64> = unsure.iter().map(|f| f.0).collect();
        let now = ask_again(&a, report.moved)?;
        for ((_, to, s), n) in unsure.into_iter().zip(now) {
            if n == to {
                report.moved += 1;
                *report.moved_per_node.entry(to as u32).or_default() += 1;
            } else {
                let errno = if s < 0 { -s } else { libc::EAGAIN };
                *report.failed.entry(errno).or_default() += 1;
            }
        }
    }
    progress.add_done(batch.len() as u64 * report.page_size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn base_pages_go_round_robin_page_by_page() {
        let s = Stripes::new(0x10000, 4096, false, vec![1, 3]);
        let to: Vec<i32> = (0..5).map(|i| s.target_of(0x10000 + i * 4096)).collect();
        assert_eq!(to, [1, 3, 1, 3, 1]);
    }

    #[test]
    fn with_thp_the_stripe_is_2_mib_so_a_huge_page_stays_whole() {
        let start = 0x4000_0000;
        let s = Stripes::new(start, 4096, true, vec![0, 2, 4]);
        assert_eq!(s.target_of(start), 0);
        assert_eq!(
            s.target_of(start + 2 * MIB - 4096),
            0,
            "last page of stripe 0"
        );
        assert_eq!(s.target_of(start + 2 * MIB), 2);
        assert_eq!(s.target_of(start + 4 * MIB + 4096), 4);
        assert_eq!(s.target_of(start + 6 * MIB), 0, "wraps after the last node");
    }

    #[test]
    fn huge_pages_larger_than_a_stripe_go_one_per_node() {
        // hugetlb 1 GiB pages with THP in the view: the stripe is at least one page.
        let s = Stripes::new(0, 1 << 30, true, vec![0, 1]);
        assert_eq!([s.target_of(0), s.target_of(1 << 30)], [0, 1]);
    }

    #[test]
    fn the_mappings_page_size_wins_over_the_systems() {
        assert_eq!(move_page_size(0, 4096), 4096, "smaps gave none");
        assert_eq!(move_page_size(2 * MIB, 4096), 2 * MIB);
    }

    #[test]
    fn a_window_is_64_mib_of_pages_and_at_least_one_page() {
        assert_eq!(window_pages(4096), PAGES_PER_CALL as u64);
        assert_eq!(window_pages(2 * MIB), 32);
        assert_eq!(window_pages(1 << 30), 1);
    }

    #[test]
    fn windows_cover_the_range_once_and_stop_when_asked() {
        let mut seen = Vec::new();
        for_each_window(0x1000, 5 * 0x1000 + 7, 0x1000, 2, &mut |a| {
            seen.push(a);
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            seen,
            [vec![0x1000, 0x2000], vec![0x3000, 0x4000], vec![0x5000],],
            "a partial page at the end is not a page"
        );
        let mut calls = 0;
        for_each_window(0, 8 * 4096, 4096, 2, &mut |_| {
            calls += 1;
            Ok(false)
        })
        .unwrap();
        assert_eq!(calls, 1, "false stops after the first window");
    }

    #[test]
    fn the_survey_counts_resident_placed_and_headed_per_node() {
        let s = Stripes::new(0, 4096, false, vec![0, 1]);
        let addrs: Vec<u64> = (0..6).map(|i| i * 4096).collect();
        // Targets 0 1 0 1 0 1; statuses: placed, move to 1, absent, placed, move to 0,
        // not resident either.
        let now = [0, 0, -libc::ENOENT, 1, 1, -libc::EFAULT];
        let mut survey = Survey::default();
        survey.count(&s, &addrs, &now);
        survey.count(&s, &addrs[..2], &[1, 0]);
        assert_eq!(survey.resident, 6);
        assert_eq!(survey.already_placed, 2);
        assert_eq!(survey.headed, [(0, 2), (1, 2)].into());
        assert_eq!(survey.planned(), 4);
    }

    #[test]
    fn only_resident_pages_off_their_node_are_moved() {
        let s = Stripes::new(0, 4096, false, vec![0, 1]);
        let addrs: Vec<u64> = (0..4).map(|i| i * 4096).collect();
        let batch = to_move(&s, &addrs, &[1, 1, -libc::ENOENT, 0]);
        assert_eq!(batch, pairs(&[(0, 0), (3 * 4096, 1)]));
    }

    /// A batch from (address, node) pairs.
    fn pairs(p: &[(u64, i32)]) -> MoveBatch {
        MoveBatch {
            addrs: p.iter().map(|p| p.0).collect(),
            nodes: p.iter().map(|p| p.1).collect(),
        }
    }

    fn report() -> RemoteRebindReport {
        RemoteRebindReport {
            page_size: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn pages_whose_status_is_their_target_count_as_moved_without_asking_again() {
        let mut r = report();
        let p = Progress::new();
        let batch = pairs(&[(0, 1), (4096, 2), (8192, 1)]);
        settle(
            &mut r,
            &batch,
            vec![1, 2, 1],
            |_, _| panic!("not asked"),
            &p,
        )
        .unwrap();
        assert_eq!(r.moved, 3);
        assert_eq!(r.moved_per_node, [(1, 2), (2, 1)].into());
        assert!(r.failed.is_empty());
        assert_eq!(p.done(), 3 * 4096, "the batch counts as done");
    }

    #[test]
    fn pages_found_on_their_target_when_asked_again_count_as_moved() {
        let mut r = report();
        let p = Progress::new();
        let batch = pairs(&[(0, 1), (4096, 1), (8192, 1), (12288, 0)]);
        let mut asked = Vec::new();
        settle(
            &mut r,
            &batch,
            vec![1, -libc::EBUSY, 0, -libc::EACCES],
            |a, moved| {
                assert_eq!(moved, 1, "told the page that moved at once");
                asked = a.to_vec();
                // The EBUSY tail page went with its head; the others stayed.
                Ok(vec![1, 0, 1])
            },
            &p,
        )
        .unwrap();
        assert_eq!(asked, [4096, 8192, 12288]);
        assert_eq!(r.moved, 2);
        assert_eq!(r.moved_per_node, [(1, 2)].into());
        // A status that was a node other than the target counts as EAGAIN.
        assert_eq!(r.failed, [(libc::EACCES, 1), (libc::EAGAIN, 1)].into());
        assert_eq!(p.done(), 4 * 4096);
    }

    #[test]
    fn failing_to_ask_again_fails_the_window() {
        let mut r = report();
        let e = settle(
            &mut r,
            &pairs(&[(0, 1)]),
            vec![-libc::EBUSY],
            |_, moved| Err(RemoteError::Exited { pid: 7, moved }),
            &Progress::new(),
        );
        assert!(matches!(e, Err(RemoteError::Exited { pid: 7, .. })));
    }
}
