//! The lazy fill's CPU share (`LazyOptions::fill_priority`): its threads run at
//! SCHED_IDLE, as the kernel reports them (`/proc/self/task/*/stat`), the fault thread
//! does not; and a fill that gets no CPU (every CPU busy with normal threads) still
//! ends, filled by the fault thread, with the saved bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;
use crate::lazy::{within, DEADLINE};
use crate::*;
use hostmem::snapshot::{self, FillPriority, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 64 * MIB;
/// SCHED_IDLE and SCHED_OTHER as the kernel numbers them.
const SCHED_IDLE: u64 = 5;
const SCHED_OTHER: u64 = 0;

/// The scheduling policy of this process's thread named `name`, from its stat file
/// (field 41); None when no such thread is there.
fn policy_of(name: &str) -> Option<u64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        // Fields after "(comm)" start at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        return rest.split_whitespace().nth(41 - 3)?.parse().ok();
    }
    None
}

#[test]
fn a_starved_idle_fill_is_done_by_the_fault_thread_with_the_saved_bytes() {
    let dir = TempDir::new("lazy-share");
    let path = dir.path().join("mem.img");
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let want = random_bytes(21, SIZE as usize);
    src.hold().unwrap().write_at(0, &want).unwrap();
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let image = Arc::new(Image::open(&path).unwrap());

    // Every CPU busy with a normal thread: a SCHED_IDLE thread beside one gets well
    // under 1 % of its time (64 MiB would take minutes; the test was seen to fail
    // without the fault thread's help).
    let busy = Arc::new(AtomicBool::new(true));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cpus)
        .map(|_| {
            let busy = Arc::clone(&busy);
            std::thread::spawn(move || {
                while busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();

    let dst = Backend::builder(Kind::Memfd, "dst")
        .size(SIZE)
        .create()
        .unwrap();
    let opts = LazyOptions {
        fill_priority: FillPriority::Idle,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
    // Each thread names itself and sets its own share as it starts, and with every
    // CPU busy a new thread may wait for its first slice: look until both are seen.
    let started = std::time::Instant::now();
    let (mut fill, mut fault) = (None, None);
    while (fill != Some(SCHED_IDLE) || fault.is_none())
        && started.elapsed() < std::time::Duration::from_secs(5)
    {
        fill = policy_of("hostmem-fill0").or(fill);
        fault = fault.or_else(|| policy_of("hostmem-uffd0"));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // While the CPUs stay busy, everything but the unit the idle fill thread has in
    // hand must get filled (by the fault thread: without it, nothing would be); that
    // one unit is the fill thread's to finish, at its tiny share, or once the CPUs
    // are free again.
    let mut starved_fill = server.progress();
    while starved_fill.bytes_filled + BLOCK < starved_fill.bytes_total
        && started.elapsed() < DEADLINE
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
        starved_fill = server.progress();
    }
    busy.store(false, Ordering::Relaxed);
    hogs.into_iter().for_each(|h| h.join().unwrap());
    let filled = server.wait_timeout(DEADLINE);
    let report = server.wait().unwrap();

    // Starved, the fill thread lives on until the end: it is there to be seen.
    assert_eq!(fill, Some(SCHED_IDLE), "the fill thread's policy");
    assert_eq!(fault, Some(SCHED_OTHER), "the fault thread's policy");
    assert!(
        starved_fill.bytes_filled + BLOCK >= starved_fill.bytes_total,
        "under load only {} of {} bytes were filled within {DEADLINE:?}",
        starved_fill.bytes_filled,
        starved_fill.bytes_total
    );
    assert!(filled && report.progress.filled, "{report:?}");
    let dst = Arc::new(dst);
    let d = Arc::clone(&dst);
    within(DEADLINE, "reading back", move || {
        assert_same_bytes(&read_memory(&d), &want, "an idle fill done under load");
    });
}
