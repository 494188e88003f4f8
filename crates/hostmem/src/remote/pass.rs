//! The two passes of a move over a range, window by window: the survey (where every
//! resident page is and where it goes) and the move itself. They talk to the kernel
//! only through [`Pages`], so the whole pass (which pages are asked about, which are
//! sent where in which call, what the answers count as) runs in the tests against a
//! made-up kernel with pages on several nodes: a one-node host cannot show a page sent
//! to the wrong node, since every node it could name is the same one.

use super::error::RemoteError;
use super::plan::{self, MoveBatch, Stripes, Survey};
use super::report::RemoteRebindReport;
use crate::prealloc::Progress;

/// The kernel as a move sees it: move_pages(2) on the process, or a fake in tests.
pub(super) trait Pages {
    /// move_pages(2)'s status of each address: its node, or a negative errno (a page
    /// that is not resident).
    fn status(&mut self, addrs: &[u64]) -> Result<Vec<i32>, RemoteError>;

    /// Asks the kernel to move each page of `batch` to its node; move_pages(2)'s
    /// status of each page after. `moved` is how many pages had moved before this
    /// call, for the error when the call fails.
    fn move_batch(&mut self, batch: &MoveBatch, moved: u64) -> Result<Vec<i32>, RemoteError>;
}

/// A range walked in windows: [start, start+len) in pages of `page` bytes, `window`
/// pages per move_pages(2) call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Windows {
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) page: u64,
    pub(super) window: u64,
}

impl Windows {
    fn each(
        &self,
        f: &mut dyn FnMut(Vec<u64>) -> Result<bool, RemoteError>,
    ) -> Result<(), RemoteError> {
        plan::for_each_window(self.start, self.len, self.page, self.window, f)
    }
}

/// Pass 1: where every resident page is, and how many go to each node. Nothing moves.
pub(super) fn survey(
    windows: Windows,
    stripes: &Stripes,
    pages: &mut dyn Pages,
) -> Result<Survey, RemoteError> {
    let mut survey = Survey::default();
    windows.each(&mut |addrs| {
        survey.count(stripes, &addrs, &pages.status(&addrs)?);
        Ok(true)
    })?;
    Ok(survey)
}

/// The status of `addrs` while pages move: the process having gone is an exit
/// during the move, after `moved` pages.
fn status_during_move(
    pages: &mut dyn Pages,
    addrs: &[u64],
    moved: u64,
) -> Result<Vec<i32>, RemoteError> {
    pages.status(addrs).map_err(|e| match e {
        RemoteError::NoProcess { pid } => RemoteError::Exited { pid, moved },
        e => e,
    })
}

/// Pass 2: the move, window by window, asking again where each page is (the process
/// runs meanwhile) and sending only the pages off their node; counted into `report`
/// and `progress`. A cancel stops it between windows.
pub(super) fn move_windows(
    windows: Windows,
    stripes: &Stripes,
    pages: &mut dyn Pages,
    report: &mut RemoteRebindReport,
    progress: &Progress,
) -> Result<(), RemoteError> {
    windows.each(&mut |addrs| {
        if progress.is_cancelled() {
            report.cancelled = true;
            return Ok(false);
        }
        let now = status_during_move(pages, &addrs, report.moved)?;
        let batch = plan::to_move(stripes, &addrs, &now);
        if batch.is_empty() {
            return Ok(true);
        }
        let st = pages.move_batch(&batch, report.moved)?;
        plan::settle(
            report,
            &batch,
            st,
            |a, moved| status_during_move(pages, a, moved),
            progress,
        )?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const PAGE: u64 = 4096;
    /// Not 0 and not on a stripe boundary: a page's target counts from the range's start.
    const START: u64 = 3 * PAGE;
    const ENOENT: i32 = -libc::ENOENT;
    const EFAULT: i32 = -libc::EFAULT;

    /// A made-up kernel: where each page is, which pages a move leaves where they
    /// are (and with what status), and every call the pass made.
    #[derive(Default)]
    struct Fake<'a> {
        /// Each page's status by address: its node, or a negative errno. Pages not
        /// listed are not resident (-ENOENT).
        at: BTreeMap<u64, i32>,
        /// Pages a move does not simply move: the status move_pages gives each, and
        /// where it is after the call (all others: their target, both).
        answers: BTreeMap<u64, (i32, i32)>,
        /// The addresses of each status call.
        asked: Vec<Vec<u64>>,
        /// Each move_pages call's arguments.
        moves: Vec<MoveBatch>,
        /// Status calls answered before the process is gone.
        lives_for: Option<usize>,
        /// Cancelled by the first move_pages call.
        cancel: Option<&'a Progress>,
    }

    impl Fake<'_> {
        /// Pages 0, 1, ... of the range with these statuses.
        fn with(statuses: &[i32]) -> Self {
            Fake {
                at: (0..).map(page).zip(statuses.iter().copied()).collect(),
                ..Default::default()
            }
        }

        /// The status of page `i` now.
        fn of(&self, i: u64) -> i32 {
            self.at.get(&page(i)).copied().unwrap_or(ENOENT)
        }
    }

    impl Pages for Fake<'_> {
        fn status(&mut self, addrs: &[u64]) -> Result<Vec<i32>, RemoteError> {
            if self.lives_for.is_some_and(|n| self.asked.len() >= n) {
                return Err(RemoteError::NoProcess { pid: 42 });
            }
            self.asked.push(addrs.to_vec());
            Ok(addrs
                .iter()
                .map(|a| self.at.get(a).copied().unwrap_or(ENOENT))
                .collect())
        }

        fn move_batch(&mut self, b: &MoveBatch, _moved: u64) -> Result<Vec<i32>, RemoteError> {
            assert_eq!(b.addrs.len(), b.nodes.len(), "one node per page");
            self.moves.push(b.clone());
            if let Some(p) = self.cancel {
                p.cancel();
            }
            let mut st = Vec::new();
            for (&a, &to) in b.addrs.iter().zip(&b.nodes) {
                let (status, after) = self.answers.get(&a).copied().unwrap_or((to, to));
                self.at.insert(a, after);
                st.push(status);
            }
            Ok(st)
        }
    }

    fn page(i: u64) -> u64 {
        START + i * PAGE
    }

    /// A batch of pages (by index) and their nodes.
    fn batch(pages: &[u64], nodes: &[i32]) -> MoveBatch {
        MoveBatch {
            addrs: pages.iter().map(|&i| page(i)).collect(),
            nodes: nodes.to_vec(),
        }
    }

    /// Both passes over `pages` pages in windows of `window`, interleaved over
    /// `nodes` (THP stripes with `thp`), against `fake`.
    fn run(
        fake: &mut Fake<'_>,
        pages: u64,
        window: u64,
        thp: bool,
        nodes: &[u32],
        progress: &Progress,
    ) -> Result<(Survey, RemoteRebindReport), RemoteError> {
        let w = Windows {
            start: START,
            len: pages * PAGE,
            page: PAGE,
            window,
        };
        let stripes = Stripes::new(START, PAGE, thp, nodes.to_vec());
        let survey = survey(w, &stripes, fake)?;
        let mut report = RemoteRebindReport {
            page_size: PAGE,
            ..Default::default()
        };
        move_windows(w, &stripes, fake, &mut report, progress)?;
        Ok((survey, report))
    }

    #[test]
    fn each_page_of_a_mixed_window_is_sent_to_its_own_node() {
        // Targets by page: 1 2 1 2 1 2 1 2. Pages 3 and 4 are on theirs; 6 and 7 are
        // not resident (no page; the shared zero page).
        let mut fake = Fake::with(&[0, 1, 2, 2, 1, 0, ENOENT, EFAULT]);
        let (survey, r) = run(&mut fake, 8, 64, false, &[1, 2], &Progress::new()).unwrap();
        assert_eq!(
            fake.moves,
            [batch(&[0, 1, 2, 5], &[1, 2, 1, 2])],
            "move_pages' pages and their nodes: each page its own stripe's node"
        );
        assert_eq!(
            (survey.resident, survey.already_placed, survey.planned()),
            (6, 2, 4)
        );
        assert_eq!(survey.headed, [(1, 2), (2, 2)].into());
        assert_eq!((r.moved, r.moved_per_node), (4, [(1, 2), (2, 2)].into()));
        let now: Vec<i32> = (0..8).map(|i| fake.of(i)).collect();
        assert_eq!(now, [1, 2, 1, 2, 1, 2, ENOENT, EFAULT], "each on its node");
    }

    #[test]
    fn pages_all_on_their_node_or_not_resident_make_no_move_call() {
        let mut fake = Fake::with(&[3, ENOENT, 3, EFAULT, -libc::EACCES, 3]);
        let p = Progress::new();
        let (survey, r) = run(&mut fake, 6, 64, false, &[3], &p).unwrap();
        assert!(fake.moves.is_empty(), "{:?}", fake.moves);
        assert_eq!((survey.resident, survey.already_placed), (3, 3));
        assert_eq!((r.moved, r.failed_total(), p.done()), (0, 0, 0));
    }

    #[test]
    fn stripes_run_on_across_window_boundaries_and_each_page_is_asked_once_a_pass() {
        // 10 pages on node 3, windows of 4, three target nodes: neither the windows nor
        // the stripes line up, so a window's pages do not start again at node 0.
        let mut fake = Fake::with(&[3; 10]);
        let (_, r) = run(&mut fake, 10, 4, false, &[0, 1, 2], &Progress::new()).unwrap();
        assert_eq!(
            fake.moves,
            [
                batch(&[0, 1, 2, 3], &[0, 1, 2, 0]),
                batch(&[4, 5, 6, 7], &[1, 2, 0, 1]),
                batch(&[8, 9], &[2, 0]),
            ],
            "move_pages' pages and nodes per window: the stripes carry on from the last window"
        );
        let windows: Vec<Vec<u64>> = [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]
            .iter()
            .map(|w| w.iter().map(|&i| page(i)).collect())
            .collect();
        let twice: Vec<Vec<u64>> = windows.iter().chain(&windows).cloned().collect();
        assert_eq!(fake.asked, twice, "survey, then move, window by window");
        assert_eq!(r.moved_per_node, [(0, 4), (1, 3), (2, 3)].into());
    }

    #[test]
    fn with_thp_a_2_mib_stripe_goes_whole_to_one_node_across_windows() {
        let stripe = plan::THP_STRIPE / PAGE; // 512 pages
        let mut fake = Fake::with(&vec![0; 2 * stripe as usize]);
        let (_, r) = run(&mut fake, 2 * stripe, 300, true, &[0, 1], &Progress::new()).unwrap();
        // The first stripe is on node 0 already; the second moves whole to node 1, in
        // the three windows it spans.
        let sent: Vec<(u64, i32)> = fake
            .moves
            .iter()
            .flat_map(|b| b.addrs.iter().copied().zip(b.nodes.iter().copied()))
            .collect();
        let want: Vec<(u64, i32)> = (stripe..2 * stripe).map(|i| (page(i), 1)).collect();
        assert_eq!(
            sent, want,
            "pages sent and their nodes: the second stripe, to node 1"
        );
        assert_eq!(fake.moves.len(), 3, "windows 300-599, 600-899, 900-1023");
        assert_eq!(r.moved, stripe);
    }

    #[test]
    fn pages_the_kernel_does_not_move_are_counted_by_their_errno() {
        // Page 0 is shared (EACCES); page 1 a tail page that went with its head
        // (EBUSY, but on its node when asked again); page 2 stays on its old node.
        let mut fake = Fake::with(&[0, 0, 0, 0]);
        fake.answers = [
            (page(0), (-libc::EACCES, 0)),
            (page(1), (-libc::EBUSY, 1)),
            (page(2), (0, 0)),
        ]
        .into();
        let p = Progress::new();
        let (_, r) = run(&mut fake, 4, 64, false, &[1], &p).unwrap();
        assert_eq!(
            fake.moves,
            [batch(&[0, 1, 2, 3], &[1, 1, 1, 1])],
            "every page sent once"
        );
        assert_eq!(r.moved, 2, "page 3, and page 1 with its head");
        assert_eq!(r.failed, [(libc::EACCES, 1), (libc::EAGAIN, 1)].into());
        assert_eq!(p.done(), 4 * PAGE);
    }

    #[test]
    fn a_cancel_stops_the_move_before_the_next_window() {
        let p = Progress::new();
        let mut fake = Fake::with(&[0; 6]);
        fake.cancel = Some(&p);
        let (_, r) = run(&mut fake, 6, 2, false, &[1], &p).unwrap();
        assert_eq!(
            fake.moves,
            [batch(&[0, 1], &[1, 1])],
            "only the first window is sent"
        );
        assert!(r.cancelled);
        assert_eq!(r.moved, 2);
        assert_eq!(
            fake.asked.len(),
            3 + 1,
            "three survey windows, one move window"
        );
    }

    #[test]
    fn the_process_going_during_the_move_is_an_exit_after_the_pages_moved() {
        let mut fake = Fake::with(&[0; 4]);
        // Two survey windows, the first move window; then the process is gone.
        fake.lives_for = Some(3);
        let e = run(&mut fake, 4, 2, false, &[1], &Progress::new()).unwrap_err();
        assert!(
            matches!(e, RemoteError::Exited { pid: 42, moved: 2 }),
            "{e:?}"
        );
        // Gone during the survey, it is no process (nothing moved yet).
        let mut fake = Fake::with(&[0; 4]);
        fake.lives_for = Some(1);
        let e = run(&mut fake, 4, 2, false, &[1], &Progress::new()).unwrap_err();
        assert!(matches!(e, RemoteError::NoProcess { pid: 42 }), "{e:?}");
    }
}
