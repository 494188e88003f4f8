//! Save and restore into a fresh backend, kind by kind: the bytes come back, holes stay
//! holes in the memory (smaps Rss) and in the file (st_blocks).

use std::os::unix::fs::MetadataExt;

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, Image, RestoreOptions, SaveOptions};
use hostmem::{Backend, Builder, Kind, Progress};

const SIZE: u64 = 64 * MIB;
/// Resident slack a mapping may have beyond the data blocks (none expected).
const SLACK: u64 = 64 * 1024;

/// Builds the source from `make`, scatters, saves, restores into a second backend from
/// `make`, and checks what the kernel and the bytes say.
fn round_trip(tag: &str, make: impl Fn(&str) -> Builder) -> (Backend, Backend) {
    let dir = TempDir::new(tag);
    let image_path = dir.path().join("mem.img");
    let src = make("src").create().unwrap();
    let want = scatter(&src.hold().unwrap(), 7);
    let src_rss = rss(&src);

    let report =
        snapshot::save(&src, &image_path, &SaveOptions::default(), &Progress::new()).unwrap();
    assert_eq!(
        rss(&src),
        src_rss,
        "{tag}: saving faulted in pages the kernel knew were never written"
    );
    let written = want.data_blocks.len() as u64 * BLOCK;
    let on_disk = std::fs::metadata(&image_path).unwrap().blocks() * 512;
    // The header and table fit in a few file system blocks.
    assert!(
        on_disk <= written + written / 100 + 16 * 1024,
        "{tag}: image takes {on_disk} bytes on disk for {written} bytes of data blocks"
    );
    assert_eq!(report.data_bytes, written, "{tag}: report's data bytes");

    let dst = make("dst").create().unwrap();
    let image = Image::open(&image_path).unwrap();
    snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    let resident = rss(&dst);
    assert!(
        resident <= written + SLACK,
        "{tag}: restored memory has {resident} bytes resident for {written} bytes of data blocks"
    );
    assert_same_bytes(&read_memory(&dst), &want.bytes, tag);
    (src, dst)
}

#[test]
fn ram_thp_round_trip_keeps_the_bytes_and_restores_huge_pages() {
    let (_, dst) = round_trip("ram-thp", |id| Backend::builder(Kind::Ram, id).size(SIZE));
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") {
        return;
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{:x}-", dst.host_addr().unwrap());
    let anon_huge: u64 = smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&start))
        .take_while(|l| !l.starts_with("VmFlags"))
        .filter(|l| l.starts_with("AnonHugePages:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(
        anon_huge > 0,
        "whole 2 MiB blocks restored into THP-advised ram got no huge page"
    );
}

#[test]
fn ram_shared_4k_round_trip_keeps_the_bytes_and_the_holes() {
    // share=on ram is shmem without a descriptor: 4 KiB pages, read whole.
    round_trip("ram-4k", |id| {
        Backend::builder(Kind::Ram, id).size(SIZE).share(true)
    });
}

#[test]
fn memfd_round_trip_keeps_the_bytes_and_the_holes() {
    round_trip("memfd", |id| Backend::builder(Kind::Memfd, id).size(SIZE));
}

#[test]
fn shm_round_trip_keeps_the_bytes_and_the_holes() {
    round_trip("shm", |id| Backend::builder(Kind::Shm, id).size(SIZE));
}

#[test]
fn file_round_trip_keeps_the_bytes_and_the_holes() {
    let dir = TempDir::new("file-backing");
    let base = dir.path().to_path_buf();
    round_trip("file", |id| {
        Backend::builder(Kind::File, id)
            .size(SIZE)
            .mem_path(base.join(id))
            .share(true)
    });
}

#[test]
fn hugetlb_memfd_round_trip_keeps_the_bytes_and_the_holes() {
    // Source and destination: 32 pages each; the guard puts the pool back.
    let Ok(_pool) = PoolGuard::try_set(2 * MIB, 64) else {
        eprintln!("skipped: the kernel could not make 64 huge pages of 2 MiB");
        return;
    };
    round_trip("hugetlb", |id| {
        Backend::builder(Kind::Memfd, id)
            .size(SIZE)
            .hugetlb(true)
            .hugetlbsize(2 * MIB)
    });
}

#[test]
fn image_header_describes_the_backend_and_its_holes() {
    let dir = TempDir::new("header");
    let path = dir.path().join("mem.img");
    let src = Backend::builder(Kind::Memfd, "described")
        .size(SIZE)
        .create()
        .unwrap();
    let want = scatter(&src.hold().unwrap(), 3);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let image = Image::open(&path).unwrap();
    let h = image.header();
    assert_eq!(h.version, 1);
    assert_eq!(h.kind(), Some(Kind::Memfd));
    assert_eq!(h.id.as_deref(), Some("described"));
    assert_eq!(h.properties.get("size"), Some(&serde_json::json!(SIZE)));
    assert_eq!(h.page_size, 4096);
    assert_eq!(h.blocks, SIZE / BLOCK);
    // The data starts page-aligned, and each data block's bytes are in the file at
    // the region's offset plus the block's offset in memory (the layout a private
    // mapping of the file needs). The test finds its own bytes.
    let r = h.regions[0];
    assert_eq!(r.file_offset % 4096, 0);
    let b3 = 3 * BLOCK as usize;
    assert_eq!(
        find_in_file(&path, &want.bytes[b3..b3 + 4096]),
        r.file_offset + 3 * BLOCK
    );
    let data: Vec<u64> = (0..h.blocks)
        .filter(|&i| image.blocks()[i as usize] != snapshot::BlockKind::Hole)
        .collect();
    assert_eq!(
        data, want.data_blocks,
        "data blocks as the table lists them"
    );
}

#[test]
fn save_of_ranges_restores_only_those_ranges() {
    let dir = TempDir::new("ranges");
    let path = dir.path().join("mem.img");
    let src = Backend::builder(Kind::Memfd, "r")
        .size(SIZE)
        .create()
        .unwrap();
    let want = scatter(&src.hold().unwrap(), 11);
    // Blocks 2..5 and the last 4 MiB, as two regions.
    let ranges = [(2 * BLOCK, 3 * BLOCK), (SIZE - 2 * BLOCK, 2 * BLOCK)];
    snapshot::save_ranges(
        &src,
        &ranges,
        &path,
        &SaveOptions::default(),
        &Progress::new(),
    )
    .unwrap();
    let dst = Backend::builder(Kind::Memfd, "r2")
        .size(SIZE)
        .create()
        .unwrap();
    let image = Image::open(&path).unwrap();
    assert_eq!(image.header().regions.len(), 2);
    snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    let mut expect = vec![0u8; SIZE as usize];
    for (off, len) in ranges {
        let (a, b) = (off as usize, (off + len) as usize);
        expect[a..b].copy_from_slice(&want.bytes[a..b]);
    }
    assert_same_bytes(&read_memory(&dst), &expect, "ranges");
}

#[test]
fn private_file_round_trip_keeps_the_files_bytes_and_the_copied_pages() {
    // share=off over a file that already has data: memory reads the file where the
    // guest did not write, and the guest's writes live in private copies the file never
    // sees. Both must be saved: the file's block 10, and the scattered writes.
    let dir = TempDir::new("file-private");
    let image_path = dir.path().join("mem.img");
    let backing = dir.path().join("src.ram");
    let old = random_bytes(99, BLOCK as usize);
    let f = std::fs::File::create(&backing).unwrap();
    f.set_len(SIZE).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &old, 10 * BLOCK).unwrap();
    let src = Backend::builder(Kind::File, "src")
        .size(SIZE)
        .mem_path(&backing)
        .share(false)
        .create()
        .unwrap();
    let mut want = scatter(&src.hold().unwrap(), 21);
    want.bytes[(10 * BLOCK) as usize..(11 * BLOCK) as usize].copy_from_slice(&old);
    snapshot::save(&src, &image_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let on_file = std::fs::read(&backing).unwrap();
    assert!(
        on_file[..(10 * BLOCK) as usize].iter().all(|&b| b == 0),
        "share=off wrote the file: the test's premise is wrong"
    );

    let dst = Backend::builder(Kind::File, "dst")
        .size(SIZE)
        .mem_path(dir.path().join("dst.ram"))
        .share(false)
        .create()
        .unwrap();
    let image = Image::open(&image_path).unwrap();
    snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    assert_same_bytes(&read_memory(&dst), &want.bytes, "file share=off");
}
