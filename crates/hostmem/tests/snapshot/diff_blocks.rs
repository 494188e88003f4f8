//! Diffs with their own (small) block size over a base of 2 MiB blocks: N random pages
//! written cost N pages of file — counted from the file by SEEK_DATA/SEEK_HOLE and
//! st_blocks — and base + diff (or a chain mixing block sizes) restores byte for byte,
//! read back through /proc/self/mem.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, Dirty, Image, RestoreOptions, SaveOptions};
use hostmem::{Backend, InUse, Kind, Progress};

const SIZE: u64 = 64 * MIB;
const PAGE: u64 = 4096;

fn memfd(id: &str) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(SIZE)
        .create()
        .unwrap()
}

/// `n` distinct pages picked by the test's own xorshift, away from `avoid`.
fn random_pages(n: usize, seed: u64, avoid: &[u64]) -> Vec<u64> {
    random_pages_of(SIZE, n, seed, avoid)
}

fn random_pages_of(len: u64, n: usize, seed: u64, avoid: &[u64]) -> Vec<u64> {
    let mut x = seed | 1;
    let mut out: Vec<u64> = Vec::new();
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = x % (len / PAGE);
        if !out.contains(&p) && !avoid.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Writes each page with fresh random bytes (zeros for `zero`), into the memory, the
/// test's copy and a 4 KiB-page dirty bitmap.
fn write_pages(hold: &InUse, want: &mut [u8], pages: &[u64], seed: u64, zero: bool) -> Vec<u64> {
    let mut bits = vec![0u64; (want.len() as u64 / PAGE).div_ceil(64) as usize];
    for (n, &p) in pages.iter().enumerate() {
        let data = if zero {
            vec![0u8; PAGE as usize]
        } else {
            random_bytes(seed + n as u64, PAGE as usize)
        };
        let off = (p * PAGE) as usize;
        hold.write_at(off, &data).unwrap();
        want[off..off + PAGE as usize].copy_from_slice(&data);
        bits[(p / 64) as usize] |= 1 << (p % 64);
    }
    bits
}

fn dirty(bits: &[u64]) -> Dirty<'_> {
    Dirty {
        page_size: PAGE,
        bits,
    }
}

/// Bytes of `file` past `from` that the file system holds data for (SEEK_DATA/HOLE).
fn data_bytes_past(file: &File, from: u64) -> u64 {
    use rustix::fs::{seek, SeekFrom};
    let len = file.metadata().unwrap().len();
    let (mut at, mut total) = (from, 0);
    while at < len {
        let Ok(start) = seek(file, SeekFrom::Data(at)) else {
            break; // ENXIO: no data past `at`
        };
        let end = seek(file, SeekFrom::Hole(start)).unwrap().min(len);
        total += end - start;
        at = end;
    }
    total
}

/// Restores `diff` with `base` into `dst` and compares every byte with `want`.
fn restored_equal(diff: &Image, base: &Image, dst: &Backend, want: &[u8], what: &str) {
    let opts = RestoreOptions::default();
    snapshot::restore_diff(diff, base, dst, &opts, &Progress::new()).unwrap();
    assert_same_bytes(&read_memory(dst), want, what);
}

/// A source backend with scattered data saved as a base of 2 MiB blocks, restored into
/// a fresh backend (where a guest would go on running), and what that memory holds.
fn restored_base(dir: &TempDir, seed: u64) -> (Image, Backend, Vec<u8>) {
    let base_path = dir.path().join("base.img");
    let src = memfd("src");
    let want = scatter(&src.hold().unwrap(), seed).bytes;
    snapshot::save(&src, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let base = Image::open(&base_path).unwrap();
    assert_eq!(base.header().block_size, BLOCK);
    let work = memfd("work");
    snapshot::restore(&base, &work, &RestoreOptions::default(), &Progress::new()).unwrap();
    (base, work, want)
}

#[test]
fn a_diff_of_n_random_pages_holds_n_pages_and_restores_with_its_2m_base() {
    const N: usize = 300;
    let dir = TempDir::new("diff-small");
    let (base, work, mut want) = restored_base(&dir, 71);
    assert_same_bytes(&read_memory(&work), &want, "the restored base");
    let pages = random_pages(N, 0xd1ff, &[]);
    let bits = write_pages(&work.hold().unwrap(), &mut want, &pages, 700, false);
    let diff_path = dir.path().join("diff.img");
    snapshot::save_diff(&work, &base, &dirty(&bits), &diff_path, &Progress::new()).unwrap();

    let diff = Image::open(&diff_path).unwrap();
    let h = diff.header();
    assert_eq!(h.block_size, PAGE, "the default: the dirty bitmap's page");
    // Counted by the file system, from where the memory's bytes start (past the header
    // and table): exactly the N pages written, each a 4 KiB extent.
    let data_from = h.regions[0].file_offset;
    let file = File::open(&diff_path).unwrap();
    assert_eq!(
        data_bytes_past(&file, data_from),
        N as u64 * PAGE,
        "SEEK_DATA: the diff's data past its table"
    );
    // On disk: the N pages (+10 %) and the header and a sparse table of N entries of
    // 24 bytes, rounded up to pages — not 16 bytes for each of the memory's 16384
    // blocks, which a dense table would add (256 KiB, more than the 10 %).
    let mut len = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut len, 12).unwrap();
    let table_at = (32 + u64::from(u32::from_le_bytes(len))).next_multiple_of(16);
    let head = (table_at + N as u64 * 24).next_multiple_of(PAGE);
    let on_disk = file.metadata().unwrap().blocks() * 512;
    let limit = (N as u64 * PAGE) * 11 / 10 + head;
    assert!(
        on_disk <= limit,
        "st_blocks: the diff takes {on_disk} bytes for {N} pages (limit {limit})"
    );
    assert!(
        data_from <= head,
        "the data starts at {data_from}, past {head}"
    );
    assert_eq!(
        (h.version, h.entries),
        (2, N as u64),
        "a sparse table of N entries"
    );
    // Each page written is in the file, where its memory offset says.
    let mut page = vec![0u8; PAGE as usize];
    for &p in pages.iter().take(20) {
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut page, data_from + p * PAGE).unwrap();
        let off = (p * PAGE) as usize;
        assert_eq!(
            page[..],
            want[off..off + PAGE as usize],
            "page {p} in the file"
        );
    }
    let v = diff.verify(0, &Progress::new()).unwrap();
    assert_eq!(v.data_blocks, N as u64);

    restored_equal(
        &diff,
        &base,
        &memfd("dst"),
        &want,
        "2 MiB base + 4 KiB diff",
    );
}

#[test]
fn a_chain_of_2m_base_and_4k_diffs_restores_byte_for_byte_over_memory_in_use() {
    let dir = TempDir::new("diff-small-chain");
    let path = |n: &str| dir.path().join(n);
    let (base, work, mut want) = restored_base(&dir, 81);
    let hold = work.hold().unwrap();
    // d1: random pages, two of them in block 1 (a hole in the base) and one at the
    // start of block 3 (data in the base).
    let mut p1 = random_pages(150, 0xc0ffee, &[]);
    p1.extend([BLOCK / PAGE + 7, BLOCK / PAGE + 8, 3 * BLOCK / PAGE]);
    let bits = write_pages(&hold, &mut want, &p1, 800, false);
    snapshot::save_diff(
        &work,
        &base,
        &dirty(&bits),
        path("d1.img"),
        &Progress::new(),
    )
    .unwrap();
    let d1 = Image::open(path("d1.img")).unwrap();
    // d2: some of d1's pages zeroed again (holes in d2 over data in d1), others new.
    let zeroed = [p1[0], p1[1], BLOCK / PAGE + 7];
    let b_zero = write_pages(&hold, &mut want, &zeroed, 0, true);
    let fresh = random_pages(40, 0xbeef, &p1);
    let b_new = write_pages(&hold, &mut want, &fresh, 900, false);
    let bits: Vec<u64> = b_zero.iter().zip(&b_new).map(|(a, b)| a | b).collect();
    snapshot::save_diff(&work, &d1, &dirty(&bits), path("d2.img"), &Progress::new()).unwrap();
    let d2 = Image::open(path("d2.img")).unwrap();
    assert_eq!(
        (d1.header().block_size, d2.header().block_size),
        (PAGE, PAGE)
    );

    // Into memory in use (every byte 0x77): holes of the chain must be cleared, too.
    let dst = memfd("dst");
    dst.hold().unwrap().fill(0, SIZE as usize, 0x77).unwrap();
    let opts = RestoreOptions::default();
    snapshot::restore_chain(&[&base, &d1, &d2], &dst, &opts, &Progress::new()).unwrap();
    assert_same_bytes(
        &read_memory(&dst),
        &want,
        "2 MiB base + 4 KiB d1 + 4 KiB d2",
    );

    // A diff with larger blocks than its base's: refused when saved.
    let opts_2m = SaveOptions {
        block_size: BLOCK,
        ..SaveOptions::default()
    };
    let e = snapshot::save_diff_with(
        &work,
        &d2,
        &dirty(&bits),
        path("d3.img"),
        &opts_2m,
        &Progress::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not a multiple of the diff's"),
        "{e}"
    );
    assert!(!path("d3.img").exists(), "a refused diff left a file");
}

#[test]
fn a_small_block_diff_is_refused_with_a_base_that_is_not_its_own() {
    let dir = TempDir::new("diff-small-other");
    let (base, work, mut want) = restored_base(&dir, 91);
    let bits = write_pages(
        &work.hold().unwrap(),
        &mut want,
        &random_pages(10, 5, &[]),
        1000,
        false,
    );
    let diff_path = dir.path().join("diff.img");
    snapshot::save_diff(&work, &base, &dirty(&bits), &diff_path, &Progress::new()).unwrap();
    let diff = Image::open(&diff_path).unwrap();
    // Same memory, same layout, saved again: another image all the same.
    for (name, bs) in [("other.img", BLOCK), ("other-4k.img", PAGE)] {
        let other_path = dir.path().join(name);
        let opts = SaveOptions {
            block_size: bs,
            ..SaveOptions::default()
        };
        snapshot::save(&work, &other_path, &opts, &Progress::new()).unwrap();
        let other = Image::open(&other_path).unwrap();
        let dst = memfd("dst");
        let ropts = RestoreOptions::default();
        let e = snapshot::restore_diff(&diff, &other, &dst, &ropts, &Progress::new()).unwrap_err();
        assert!(e.to_string().contains("is not the base of"), "{name}: {e}");
        assert_eq!(rss(&dst), 0, "{name}: a refused restore wrote memory");
    }
    // A base whose block size the diff's does not divide: 4 KiB blocks under 8 KiB.
    let base_4k = dir.path().join("base-4k.img");
    let opts = SaveOptions {
        block_size: PAGE,
        ..SaveOptions::default()
    };
    snapshot::save(&work, &base_4k, &opts, &Progress::new()).unwrap();
    let base_4k = Image::open(&base_4k).unwrap();
    let opts_8k = SaveOptions {
        block_size: 2 * PAGE,
        ..SaveOptions::default()
    };
    let e = snapshot::save_diff_with(
        &work,
        &base_4k,
        &dirty(&bits),
        dir.path().join("d8k.img"),
        &opts_8k,
        &Progress::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("block size 4096 is not a multiple of the diff's 8192"),
        "{e}"
    );
}

#[test]
fn a_corrupt_base_block_under_a_small_block_diff_never_reaches_the_memory() {
    let dir = TempDir::new("diff-small-bad-base");
    let (base, work, mut want) = restored_base(&dir, 95);
    // One dirty page at the end of block 3; the rest of block 3 is left to the base.
    let last = 4 * BLOCK / PAGE - 1;
    let bits = write_pages(&work.hold().unwrap(), &mut want, &[last], 1100, false);
    let diff_path = dir.path().join("diff.img");
    snapshot::save_diff(&work, &base, &dirty(&bits), &diff_path, &Progress::new()).unwrap();
    // Flip a byte in page 1 of block 3 in the base file (found by the test's bytes).
    let b3 = (3 * BLOCK) as usize;
    let at = find_in_file(base.path(), &want[b3..b3 + 64]) + PAGE;
    flip_byte(base.path(), at);
    let (base, diff) = (
        Image::open(base.path()).unwrap(),
        Image::open(&diff_path).unwrap(),
    );
    let (dst, one) = (memfd("dst"), RestoreOptions { threads: 1 });
    let e = snapshot::restore_diff(&diff, &base, &dst, &one, &Progress::new()).unwrap_err();
    assert_eq!(e.block(), Some(3), "the base's block: {e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    let mem = read_memory(&dst);
    assert!(
        mem[b3..b3 + BLOCK as usize].iter().all(|&b| b == 0),
        "the memory received bytes of the corrupt base block"
    );
}

#[test]
fn a_4k_block_diff_of_hugetlb_memory_holds_the_pages_written_and_restores() {
    const LEN: u64 = 32 * MIB;
    const N: usize = 50;
    // Work and destination: 16 huge pages each; the guard puts the pool back.
    let Ok(_pool) = PoolGuard::try_set(2 * MIB, 40) else {
        eprintln!("skipped: the kernel could not make 40 huge pages of 2 MiB");
        return;
    };
    let huge = |id: &str| {
        Backend::builder(Kind::Memfd, id)
            .size(LEN)
            .hugetlb(true)
            .hugetlbsize(2 * MIB)
            .create()
            .unwrap()
    };
    let dir = TempDir::new("diff-small-hugetlb");
    let work = huge("work");
    let hold = work.hold().unwrap();
    let mut want = vec![0u8; LEN as usize];
    for (n, b) in [0u64, 5, 9].into_iter().enumerate() {
        let data = random_bytes(1200 + n as u64, BLOCK as usize);
        hold.write_at((b * BLOCK) as usize, &data).unwrap();
        want[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize].copy_from_slice(&data);
    }
    let base_path = dir.path().join("base.img");
    snapshot::save(&work, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let base = Image::open(&base_path).unwrap();
    // KVM's log counts 4 KiB pages on huge page memory too.
    let pages = random_pages_of(LEN, N, 0x4a4a, &[]);
    let bits = write_pages(&hold, &mut want, &pages, 1300, false);
    let diff_path = dir.path().join("diff.img");
    snapshot::save_diff(&work, &base, &dirty(&bits), &diff_path, &Progress::new()).unwrap();
    let diff = Image::open(&diff_path).unwrap();
    assert_eq!(diff.header().block_size, PAGE);
    let file = File::open(&diff_path).unwrap();
    let data_from = diff.header().regions[0].file_offset;
    assert_eq!(
        data_bytes_past(&file, data_from),
        N as u64 * PAGE,
        "SEEK_DATA: the diff's data past its table"
    );
    let what = "hugetlb: 2 MiB base + 4 KiB diff";
    restored_equal(&diff, &base, &huge("dst"), &want, what);
}
