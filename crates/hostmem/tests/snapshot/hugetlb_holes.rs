//! Holes of hugetlb memory, whose file system answers SEEK_DATA with "all data": the
//! save leaves the huge pages the kernel never allocated unread, and a page written
//! through another mapping of the same file (which the backend's page tables do not
//! show) is saved all the same.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::common::*;
use crate::*;
use hostmem::numa::HugePool;
use hostmem::snapshot::{self, BlockKind, Image, RestoreOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;
const PAGES: u64 = SIZE / BLOCK;

/// The 2 MiB pool grown by `pages` beyond what it holds now (other users of the pool
/// keep theirs); `None` when the kernel cannot make them.
fn room_for(pages: u64) -> Option<PoolGuard> {
    let have = HugePool::read(2 * MIB, None)?;
    let guard = PoolGuard::try_set(2 * MIB, have.total + pages).ok()?;
    (guard.pool().free >= pages).then_some(guard)
}

fn hugetlb(id: &str) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(SIZE)
        .hugetlb(true)
        .hugetlbsize(2 * MIB)
        .create()
        .unwrap()
}

/// Room in the pool for a source and a destination, and the source written by
/// `scatter`; `None` (the test skipped) when the kernel cannot make the pages.
fn scattered_source(seed: u64) -> Option<(PoolGuard, Backend, Expected)> {
    let Some(pool) = room_for(2 * PAGES) else {
        eprintln!(
            "skipped: the kernel could not make {} more huge pages",
            2 * PAGES
        );
        return None;
    };
    let src = hugetlb("src");
    let want = scatter(&src.hold().unwrap(), seed);
    Some((pool, src, want))
}

/// The backend's memfd as a file of its own, and its huge pages allocated (st_blocks).
fn memfd_of(b: &Backend) -> (File, u64) {
    let hold = b.hold().unwrap();
    let (fd, off) = hold.fd().unwrap();
    assert_eq!(off, 0);
    let f = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let pages = f.metadata().unwrap().blocks() * 512 / BLOCK;
    (f, pages)
}

/// Whether the page at `addr` is present in this process's page tables (pagemap).
fn present_here(addr: u64) -> bool {
    let pm = File::open("/proc/self/pagemap").unwrap();
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, addr / 4096 * 8).unwrap();
    u64::from_le_bytes(e) >> 63 == 1
}

/// Saves `src`, restores into a fresh backend, and checks the bytes against `want`.
fn save_and_restore(src: &Backend, want: &[u8], tag: &str) -> (snapshot::SaveReport, Image) {
    let dir = TempDir::new(tag);
    let path = dir.path().join("mem.img");
    let report = snapshot::save(src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let image = Image::open(&path).unwrap();
    let dst = hugetlb("dst");
    snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    assert_same_bytes(&read_memory(&dst), want, tag);
    (report, image)
}

#[test]
fn hugetlb_save_reads_only_the_pages_the_kernel_allocated() {
    let Some((_pool, src, want)) = scattered_source(21) else {
        return;
    };
    let (_file, allocated) = memfd_of(&src);
    // scatter's data blocks and the one written and zeroed again.
    assert_eq!(allocated, want.data_blocks.len() as u64 + 1);
    let (report, image) = save_and_restore(&src, &want.bytes, "hugetlb-holes");
    assert_eq!(
        report.unread_holes,
        PAGES - allocated,
        "pages the kernel never allocated were read"
    );
    assert_eq!(
        report.zero_holes, 1,
        "the zeroed page was read and found zero"
    );
    assert_eq!(memfd_of(&src).1, allocated, "the save allocated huge pages");
    let data: Vec<u64> = (0..PAGES)
        .filter(|&i| image.blocks()[i as usize] != BlockKind::Hole)
        .collect();
    assert_eq!(
        data, want.data_blocks,
        "data blocks as the table lists them"
    );
}

#[test]
fn hugetlb_page_written_through_another_mapping_is_saved() {
    let Some((_pool, src, mut want)) = scattered_source(22) else {
        return;
    };
    let (file, before) = memfd_of(&src);
    // A second mapping of the same memfd (as a vhost-user back end has), through
    // which block 10 is written: the file has the page, the backend's mapping has
    // never faulted it.
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let other = Backend::builder(Kind::File, "other")
        .size(SIZE)
        .mem_path(path)
        .share(true)
        .create()
        .unwrap();
    let page = 10 * BLOCK;
    let bytes = random_bytes(23, BLOCK as usize);
    other
        .hold()
        .unwrap()
        .write_at(page as usize, &bytes)
        .unwrap();
    want.bytes[page as usize..(page + BLOCK) as usize].copy_from_slice(&bytes);
    assert_eq!(
        memfd_of(&src).1,
        before + 1,
        "the other mapping's write allocated"
    );
    let addr = src.host_addr().unwrap() as u64 + page;
    assert!(
        !present_here(addr),
        "the premise: the backend's own mapping does not show the page"
    );
    let (report, image) = save_and_restore(&src, &want.bytes, "hugetlb-other-mapping");
    assert!(matches!(image.blocks()[10], BlockKind::Data { .. }));
    assert_eq!(report.unread_holes, 0, "a page was taken for a hole unread");
}
