//! The serving threads' loops: the fault threads reading the userfaultfd, and the
//! background fill taking the units in order (`engine.rs` serves each).
//!
//! The fill's threads run at a lower CPU share than the fault threads (`FillPriority`,
//! SCHED_IDLE by default), so a fault thread that wakes preempts them at once instead
//! of waiting for a time slice. A fill at that share gets no CPU while every CPU has
//! other work (the guest, or the host's), so a fault thread with nothing to serve for
//! `STARVED` fills units itself, at its own share, until the next message comes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::{lock, Shared, State, BATCH};
use crate::snapshot::SnapshotError;
use crate::sys::uffd::Event;

/// How long a serving thread waits in poll(2) before it reads the userfaultfd again
/// (and looks at the stop flag). Short because, on the 6.18 kernel measured, a fault
/// raised while this thread was inside a UFFDIO_COPY sometimes became readable without
/// waking poll: with 50 ms, first touches waited a whole timeout (p50 53 ms); with 5 ms
/// the wait is bounded by it (`examples/lazy_speed.rs`). An idle thread wakes 200
/// times a second for it.
const POLL_MS: i32 = 5;
/// How long a fault thread keeps reading the userfaultfd (spinning, not yielding: a
/// yield can hand the CPU to a SCHED_IDLE fill thread for its whole slice) after its
/// last message before it sleeps in poll(2): faults come in bursts (a
/// guest walking its memory), and waking a thread asleep on an idle virtual CPU was
/// measured to cost tens of µs here. On a quiet host (load ~1.5, `lazy_speed`, fill
/// off, first restore with the saved chunk sums): first touch p50 25–33 µs with it,
/// 51–79 µs without. Costs CPU only while faults arrive.
const SPIN: Duration = Duration::from_micros(100);
/// How long the fill may take no unit, and a fault thread read no message, before
/// that fault thread fills in the fill's place: a fill thread that gets a CPU takes a
/// unit in about a millisecond, so this long without one means it gets none; and a
/// guest quiet this long is not in the middle of a burst of faults.
const STARVED: Duration = Duration::from_millis(20);

impl Shared {
    /// The fault-serving loop: until stopped or the address space is gone. Messages are
    /// read until none is left, and for `SPIN` after the last, before the thread polls
    /// again: a fault that arrived while this thread was copying is read at once, not
    /// after a poll. A poll that times out while the fill is starved fills a unit.
    pub(super) fn serve_faults(&self, buf: &mut Vec<u8>) {
        let fail = |what, source| {
            self.fail(SnapshotError::Io {
                what,
                path: self.image.path().to_path_buf(),
                source,
            })
        };
        let mut last = Instant::now();
        // The fill's place when last seen to move, and when.
        let mut watch = (self.fill_next.load(Ordering::Relaxed), Instant::now());
        let mut filling = false;
        while !self.stop.load(Ordering::Relaxed) && !self.gone.load(Ordering::Relaxed) {
            let queued: Vec<Event> = lock(&self.queued).drain(..).collect();
            for e in queued {
                self.handle(e, buf);
            }
            match self.uffd.read_events(BATCH) {
                Ok(events) if !events.is_empty() => {
                    events.into_iter().for_each(|e| self.handle(e, buf));
                    last = Instant::now();
                    // The fill threads get their chance again.
                    watch = (self.fill_next.load(Ordering::Relaxed), last);
                    filling = false;
                    continue;
                }
                Ok(_) => {}
                Err(e) => return fail("reading the userfaultfd of", e),
            }
            if last.elapsed() < SPIN {
                // Awake a little longer: the next fault of a burst is read at once.
                std::hint::spin_loop();
                continue;
            }
            // Filling in the fill's place: only a look for messages between units.
            match self.uffd.poll(if filling { 0 } else { POLL_MS }) {
                Ok(true) => {}
                // Only after STARVED without a message: a fault that comes while this
                // thread fills waits for the block in hand.
                Ok(false) if last.elapsed() >= STARVED => {
                    filling = self.fill_if_starved(&mut watch, buf);
                }
                Ok(false) => {}
                Err(e) => return fail("polling the userfaultfd of", e),
            }
        }
    }

    /// After `STARVED` without a message: when the fill has taken no unit for as long,
    /// fills one and returns true (the loop then only looks for messages before the
    /// next, so the fill goes on at this thread's share until a fault comes; that
    /// fault waits for the unit in hand, as for a fault on a unit being filled).
    fn fill_if_starved(&self, watch: &mut (u64, Instant), buf: &mut Vec<u8>) -> bool {
        let at = self.fill_next.load(Ordering::Relaxed);
        if at as usize >= self.fill_order.len() {
            return false;
        }
        if at != watch.0 {
            *watch = (at, Instant::now());
            return false;
        }
        if watch.1.elapsed() < STARVED {
            return false;
        }
        self.fill_one(buf);
        // Still starved unless a fill thread moves on: the next empty poll fills again.
        watch.0 = self.fill_next.load(Ordering::Relaxed);
        true
    }

    fn handle(&self, e: Event, buf: &mut Vec<u8>) {
        match e {
            Event::Fault { addr, minor, .. } => {
                self.faults.fetch_add(1, Ordering::Relaxed);
                self.fault(addr, minor, buf);
            }
            Event::Remove { start, end } | Event::Unmap { start, end } => {
                lock(&self.removed).push((start, end));
            }
            Event::Other(_) => {}
        }
    }

    /// Background fill: the units in the fill order, taken by every fill thread.
    pub(super) fn fill(&self, buf: &mut Vec<u8>) {
        while !self.stop.load(Ordering::Relaxed) && !self.gone.load(Ordering::Relaxed) {
            if !self.fill_one(buf) {
                return;
            }
        }
    }

    /// Takes the next unit of the fill order and serves it if it is still pending;
    /// false when none is left.
    fn fill_one(&self, buf: &mut Vec<u8>) -> bool {
        let k = self.fill_next.fetch_add(1, Ordering::Relaxed) as usize;
        let Some(&i) = self.fill_order.get(k) else {
            return false;
        };
        let u = &self.units[i];
        let mut state = lock(&u.state);
        if *state == State::Pending {
            *state = self.serve(u, buf);
            self.settle();
        }
        true
    }
}
