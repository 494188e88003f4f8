//! Batches of backends that fail or are cancelled while preallocating: every backend
//! unmapped (/proc/self/maps), every created file removed, the file system's room back.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use hostmem::prealloc::Progress;
use hostmem::{Backend, Error, Kind};

/// Polls /proc/self/maps and VmRSS on a thread of its own until stopped: every mapping
/// that was not there at the start, and the highest Rss seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Vma>, u64)>,
}

impl Watcher {
    fn start() -> Watcher {
        let before: HashSet<Vma> = vmas().into_iter().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut max_rss) = (Vec::<Vma>::new(), 0);
            while !s2.load(Ordering::Relaxed) {
                for v in vmas() {
                    if !before.contains(&v) && !seen.contains(&v) {
                        seen.push(v);
                    }
                }
                max_rss = max_rss.max(process_rss());
            }
            (seen, max_rss)
        });
        Watcher { stop, thread }
    }

    fn stop(self) -> (Vec<Vma>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A batch that fails while preallocating, after every backend was mapped: a file
/// backend on a 128 MiB tmpfs wants 512 MiB. Each backend's range, seen in
/// /proc/self/maps while the batch ran, is gone from it afterwards, Rss is back, the
/// created file is removed and the tmpfs has its room back. In a child of its own, so
/// no other test's mappings come and go meanwhile.
#[test]
fn a_batch_failing_in_prealloc_unmaps_every_backend_and_removes_its_files() {
    if ran_in_child("a_batch_failing_in_prealloc_unmaps_every_backend_and_removes_its_files") {
        return;
    }
    let dir = TempDir::new("batch");
    let path = dir.path().join("created");
    let fs = mount_tmpfs("128M");
    let room = fs_avail(&fs);
    let mut a = ram("a", 96 * MIB)
        .prealloc(true)
        .prealloc_threads(1)
        .build()
        .unwrap();
    let mut f = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(&path)
        .share(true)
        .build()
        .unwrap();
    let mut full = Backend::builder(Kind::File, "full")
        .size(512 * MIB)
        .mem_path(fs.path())
        .share(true)
        .prealloc(true)
        .build()
        .unwrap();
    let rss_before = process_rss();
    let watch = Watcher::start();
    let e =
        Backend::complete_batch(&mut [&mut a, &mut f, &mut full], &Progress::new()).unwrap_err();
    let (seen, max_rss) = watch.stop();
    assert_eq!(e.index, 2, "{}", e.error);
    assert!(e.error.to_string().contains("has no room"), "{}", e.error);
    // What the batch had mapped, as the kernel listed it while the batch ran.
    let find = |what: &str, pick: &dyn Fn(&Vma) -> bool| {
        seen.iter()
            .find(|v| pick(v))
            .cloned()
            .unwrap_or_else(|| panic!("{what} never seen in /proc/self/maps: {seen:#?}"))
    };
    let ranges = [
        find("a (96 MiB anonymous)", &|v| {
            v.len() == 96 * MIB as usize && v.perms == "rw-p" && v.path.is_empty()
        }),
        find("f (the created file)", &|v| {
            v.path == path.to_str().unwrap() && v.perms == "rw-s"
        }),
        find("full (the temp file on the tmpfs)", &|v| {
            v.path.starts_with(fs.path().to_str().unwrap()) && v.len() == 512 * MIB as usize
        }),
    ];
    assert!(
        max_rss >= rss_before + 64 * MIB,
        "the prealloc was under way: Rss {rss_before} -> {max_rss}"
    );
    for v in &ranges {
        assert!(
            !mapped(v.start, v.len()),
            "still mapped after the failure: {v:?}"
        );
    }
    let rss_after = process_rss();
    assert!(
        rss_after < rss_before + 16 * MIB,
        "Rss back: {rss_before} before, {max_rss} at most, {rss_after} after"
    );
    assert!(!path.exists(), "the file the batch created is removed");
    assert_eq!(fs.entries(), 0);
    assert_eq!(fs_avail(&fs), room, "the tmpfs has its room back");
}

/// The 2 GiB range is found in /proc/self/maps and its smaps Rss read while the
/// prealloc runs; after the cancel the range is gone and the process's Rss is back. In a
/// child of its own, so no other test's mappings come and go meanwhile.
#[test]
fn cancelled_prealloc_unmaps_everything() {
    if ran_in_child("cancelled_prealloc_unmaps_everything") {
        return;
    }
    let size = 2 * GIB as usize;
    let before: HashSet<Vma> = vmas().into_iter().collect();
    let rss_before = process_rss();
    let progress = Arc::new(Progress::new());
    let p2 = progress.clone();
    let canceller = std::thread::spawn(move || {
        while p2.done() < 256 * MIB {
            std::thread::yield_now();
        }
        let range = vmas()
            .into_iter()
            .find(|v| !before.contains(v) && v.len() == size && v.path.is_empty());
        let rss = range.as_ref().map(|v| smaps_rss(v.start, v.len()));
        p2.cancel();
        (range, rss)
    });
    let mut b = ram("c", size as u64)
        .prealloc(true)
        .prealloc_threads(1)
        .build()
        .unwrap();
    let e = b.complete_with(&progress).unwrap_err();
    let (range, rss) = canceller.join().unwrap();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    let range = range.expect("the 2 GiB mapping in /proc/self/maps during the prealloc");
    let rss = rss.unwrap();
    assert!(
        (256 * MIB..2 * GIB).contains(&rss),
        "smaps Rss of the range while it ran: {rss}"
    );
    assert!(
        !mapped(range.start, range.len()),
        "{range:?} still in /proc/self/maps"
    );
    let rss_after = process_rss();
    assert!(
        rss_after < rss_before + 16 * MIB,
        "Rss {rss_before} before, {rss} in the range, {rss_after} after"
    );
}
