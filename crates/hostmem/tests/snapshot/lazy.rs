//! Lazy restore (userfaultfd), kind by kind: the memory reads back the saved bytes page
//! for page (read by the test through /proc/self/mem, which faults pages in through the
//! server), and holes stay holes (smaps Rss) when nothing touches them.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::*;
use hostmem::numa::HugePool;
use hostmem::snapshot::{self, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Builder, Kind, Progress};

const SIZE: u64 = 32 * MIB;
/// Resident slack a mapping may have beyond the data blocks (none expected).
const SLACK: u64 = 64 * 1024;
/// What "at once" and "no thread hangs" mean here: generous for a loaded 2-CPU host.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `f` on a thread and returns its result, failing the test if it takes longer
/// than `limit` (a hung fault would otherwise hang the test instead of failing it).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?} (a hung fault?)"))
}

/// Bytes of the backend's mapping in memory as smaps counts them: `Rss`, plus the
/// huge pages of hugetlb memory (which smaps keeps out of Rss).
pub fn resident(b: &Backend) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{:x}-", b.host_addr().unwrap());
    text.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.starts_with("VmFlags"))
        .filter(|l| {
            l.starts_with("Rss:")
                || l.starts_with("Shared_Hugetlb:")
                || l.starts_with("Private_Hugetlb:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// Reads every page of the memory through its mapping (faults served by the server).
pub fn touch_all(hold: &hostmem::InUse) {
    let mut buf = vec![0u8; BLOCK as usize];
    for off in (0..hold.len()).step_by(BLOCK as usize) {
        let n = (hold.len() - off).min(buf.len());
        hold.read_at(off, &mut buf[..n]).unwrap();
    }
}

/// A saved image of a scattered backend from `make`, and what was written.
pub fn saved_image(
    dir: &TempDir,
    make: &dyn Fn(&str) -> Builder,
    seed: u64,
) -> (Arc<Image>, Expected) {
    let path = dir.path().join("mem.img");
    let src = make("src").create().unwrap();
    let want = scatter(&src.hold().unwrap(), seed);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    (Arc::new(Image::open(&path).unwrap()), want)
}

/// Saves, restores lazily into a fresh backend and checks: usable at once with nothing
/// resident (fill off), the bytes through faults, then a second restore with the
/// background fill: resident ≤ the data blocks, the bytes again.
fn lazy_round_trip(tag: &str, make: impl Fn(&str) -> Builder) {
    let dir = TempDir::new(tag);
    let (image, want) = saved_image(&dir, &make, 11);
    let written = want.data_blocks.len() as u64 * BLOCK;

    // Faults only: nothing resident until touched, every byte right when touched.
    let dst = make("dst").create().unwrap();
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
    assert_eq!(
        resident(&dst),
        0,
        "{tag}: a lazy restore made pages resident before any touch"
    );
    // /proc/self/mem cannot wait for a userfaultfd (its page lookups fail with EIO
    // there): touch every page through the mapping first, then read the kernel's copy.
    let hold = dst.hold().unwrap();
    within(DEADLINE, tag, move || touch_all(&hold));
    assert_same_bytes(
        &read_memory(&dst),
        &want.bytes,
        &format!("{tag}, served by faults"),
    );
    let p = server.progress();
    assert!(p.errors.is_empty(), "{tag}: {:?}", p.errors);
    assert!(p.faults > 0, "{tag}: the reads were not served by faults");
    let report = server.stop().unwrap();
    assert!(!report.touched.is_empty(), "{tag}: no touch order recorded");

    // Background fill: every data block in memory, holes not.
    let dst = make("dst2").create().unwrap();
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, LazyOptions::default()).unwrap();
    assert!(
        server.wait_timeout(DEADLINE),
        "{tag}: the background fill did not finish in {DEADLINE:?}"
    );
    let report = server.wait().unwrap();
    assert!(report.progress.filled, "{tag}: {report:?}");
    let resident = resident(&dst);
    assert!(
        resident >= written && resident <= written + SLACK,
        "{tag}: after the fill {resident} bytes resident for {written} bytes of data blocks"
    );
    assert_same_bytes(&read_memory(&dst), &want.bytes, &format!("{tag}, filled"));
}

#[test]
fn lazy_ram_4k_serves_the_saved_bytes_and_keeps_holes() {
    lazy_round_trip("lazy-ram", |id| {
        Backend::builder(Kind::Ram, id).size(SIZE).share(true)
    });
}

#[test]
fn lazy_ram_thp_serves_the_saved_bytes_and_keeps_holes() {
    lazy_round_trip("lazy-ram-thp", |id| {
        Backend::builder(Kind::Ram, id).size(SIZE)
    });
}

#[test]
fn lazy_memfd_serves_the_saved_bytes_and_keeps_holes() {
    lazy_round_trip("lazy-memfd", |id| {
        Backend::builder(Kind::Memfd, id).size(SIZE)
    });
}

#[test]
fn lazy_shm_serves_the_saved_bytes_and_keeps_holes() {
    lazy_round_trip("lazy-shm", |id| Backend::builder(Kind::Shm, id).size(SIZE));
}

#[test]
fn lazy_file_on_tmpfs_serves_the_saved_bytes_and_keeps_holes() {
    // userfaultfd serves shmem: the file lives on /dev/shm (tmpfs).
    let base = std::path::PathBuf::from(format!("/dev/shm/hostmem-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let b = base.clone();
    lazy_round_trip("lazy-file", move |id| {
        Backend::builder(Kind::File, id)
            .size(SIZE)
            .mem_path(b.join(id))
            .share(true)
    });
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn lazy_hugetlb_memfd_2m_serves_the_saved_bytes_and_keeps_holes() {
    let found = HugePool::read(2 * MIB, None).map_or(0, |p| p.total);
    // src + two destinations: 48 pages of 2 MiB.
    let Ok(_pool) = PoolGuard::try_set(2 * MIB, found + 48) else {
        panic!("the kernel could not make 48 more huge pages of 2 MiB");
    };
    lazy_round_trip("lazy-hugetlb", |id| {
        Backend::builder(Kind::Memfd, id)
            .size(SIZE)
            .hugetlb(true)
            .hugetlbsize(2 * MIB)
    });
}

#[test]
fn lazy_restore_into_a_disk_file_is_refused_with_the_reason() {
    let dir = TempDir::new("lazy-disk");
    let make = |id: &str| Backend::builder(Kind::Memfd, id).size(SIZE);
    let (image, _) = saved_image(&dir, &make, 3);
    let dst = Backend::builder(Kind::File, "disk")
        .size(SIZE)
        .mem_path(dir.path().join("disk-backing"))
        .share(true)
        .create()
        .unwrap();
    let on_tmpfs = hostmem_testkit_is_tmpfs(dir.path());
    let r = snapshot::restore_lazy(image, &dst, LazyOptions::default());
    if on_tmpfs {
        assert!(r.is_ok(), "a file on tmpfs is shmem: {:?}", r.err());
    } else {
        let e = r
            .err()
            .expect("a lazy restore into a disk file was accepted");
        assert!(e.to_string().contains("restore it by copy"), "{e}");
    }
}

fn hostmem_testkit_is_tmpfs(p: &std::path::Path) -> bool {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "tmpfs"
}

#[test]
fn lazy_restore_records_the_touch_order_and_the_order_file_round_trips() {
    use hostmem::snapshot::lazy::{load_order, order_path, save_order};
    let dir = TempDir::new("lazy-order");
    let make = |id: &str| Backend::builder(Kind::Memfd, id).size(SIZE);
    let (image, want) = saved_image(&dir, &make, 17);
    let dst = make("dst").create().unwrap();
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
    let hold = dst.hold().unwrap();
    // Touch block 6, then 3, then 6 again: the order is 6, 3.
    let got = within(DEADLINE, "order", move || {
        let mut out = Vec::new();
        for b in [6u64, 3, 6] {
            let mut buf = vec![0u8; 4096];
            hold.read_at((b * BLOCK + 5 * 4096) as usize, &mut buf)
                .unwrap();
            out.push(buf);
        }
        out
    });
    for (b, bytes) in [6u64, 3, 6].iter().zip(&got) {
        let at = (b * BLOCK + 5 * 4096) as usize;
        assert_eq!(bytes[..], want.bytes[at..at + 4096], "block {b}");
    }
    let report = server.stop().unwrap();
    assert_eq!(report.touched, vec![6, 3]);

    let path = order_path(image.path());
    save_order(&path, &image, &report.touched).unwrap();
    assert_eq!(load_order(&path, &image).unwrap(), vec![6, 3]);
    // Another image (another checksum) refuses it; a damaged file too.
    let other_dir = TempDir::new("lazy-order-other");
    let (other, _) = saved_image(&other_dir, &make, 18);
    let e = load_order(&path, &other).unwrap_err();
    assert!(e.to_string().contains("another image"), "{e}");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = load_order(&path, &image).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
}
