//! Chunk checksums (`FILE.chunks`): written by `save` beside the image, so the first
//! lazy restore of a freshly saved image serves a touch by one chunk instead of the
//! whole 2 MiB block (judged by smaps: what the kernel holds resident after one touch),
//! with the saved bytes (read through /proc/self/mem); learned by a lazy restore of an
//! image without them; refused when they are another image's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::lazy::{resident, saved_image, touch_all, within, DEADLINE};
use crate::*;
use hostmem::snapshot::lazy::{chunks_path, ChunkSums, CHUNK};
use hostmem::snapshot::{self, BlockKind, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;

fn memfd(id: &str) -> hostmem::Builder {
    Backend::builder(Kind::Memfd, id).size(SIZE)
}

/// One 4 KiB page of `b` at `off` as the kernel has it, read through /proc/self/mem
/// (which cannot wait for a userfaultfd: touch the page through the mapping first).
fn page_via_proc_mem(b: &Backend, off: u64) -> Vec<u8> {
    let mem = File::open("/proc/self/mem").unwrap();
    let mut buf = vec![0u8; 4096];
    mem.read_exact_at(&mut buf, b.host_addr().unwrap() as u64 + off)
        .unwrap();
    buf
}

/// Reads one 4 KiB page of `hold` at `off` through the mapping, within the deadline.
fn read_page(hold: &hostmem::InUse, off: u64) -> std::io::Result<Vec<u8>> {
    let h = hold.clone();
    within(DEADLINE, "page", move || {
        let mut buf = vec![0u8; 4096];
        h.read_at(off as usize, &mut buf).map(|_| buf)
    })
}

/// The first lazy restore of `path` (the fill off, given the sums beside it if any)
/// after one touch of one page in block 4: the resident bytes smaps counts, checked
/// first that the page is the saved one; then every byte, through faults.
fn resident_after_one_touch(path: &Path, want: &Expected, tag: &str) -> u64 {
    let image = Arc::new(Image::open(path).unwrap());
    let sidecar = chunks_path(path);
    let sums = sidecar
        .exists()
        .then(|| Arc::new(ChunkSums::load(&sidecar, &image).unwrap()));
    let opts = LazyOptions {
        background: false,
        chunk_sums: sums,
        ..LazyOptions::default()
    };
    let dst = memfd(tag).create().unwrap();
    let server = snapshot::restore_lazy(image, &dst, opts).unwrap();
    let off = 4 * BLOCK + 5 * 4096;
    let hold = dst.hold().unwrap();
    read_page(&hold, off).unwrap();
    let page = page_via_proc_mem(&dst, off);
    assert_eq!(
        page[..],
        want.bytes[off as usize..off as usize + 4096],
        "{tag}"
    );
    let after_one = resident(&dst);
    within(DEADLINE, tag, move || touch_all(&hold));
    assert_same_bytes(&read_memory(&dst), &want.bytes, tag);
    server.stop().unwrap();
    after_one
}

#[test]
fn a_fresh_save_s_first_lazy_restore_brings_in_one_chunk_for_a_touch_not_the_block() {
    let dir = TempDir::new("lazy-saved-chunks");
    let src = memfd("src").create().unwrap();
    let want = scatter(&src.hold().unwrap(), 31);
    let (with, without) = (dir.path().join("with.img"), dir.path().join("without.img"));
    snapshot::save(&src, &with, &SaveOptions::default(), &Progress::new()).unwrap();
    let no_sums = SaveOptions {
        chunk_size: 0,
        ..SaveOptions::default()
    };
    snapshot::save(&src, &without, &no_sums, &Progress::new()).unwrap();
    assert!(chunks_path(&with).exists(), "save wrote no chunk sums");
    assert!(!chunks_path(&without).exists());

    let chunked = resident_after_one_touch(&with, &want, "with");
    assert!(
        (4096..=CHUNK).contains(&chunked),
        "resident after one first touch with the saved sums: {chunked} bytes, want one chunk ({CHUNK})"
    );
    // Without them the touch reads, checks and installs its whole block.
    let whole = resident_after_one_touch(&without, &want, "without");
    assert_eq!(
        whole, BLOCK,
        "resident after one first touch without chunk sums"
    );
}

#[test]
fn save_writes_its_own_chunk_sums_beside_the_image_and_another_image_s_are_refused() {
    let dir = TempDir::new("saved-chunks");
    let src = memfd("src").create().unwrap();
    let want = scatter(&src.hold().unwrap(), 41);
    let a = dir.path().join("a.img");
    snapshot::save(&src, &a, &SaveOptions::default(), &Progress::new()).unwrap();
    // Written under temporary names and renamed: nothing else is left in the directory.
    assert_eq!(dir.entries(), 2, "the image and its sidecar only");
    let image = Image::open(&a).unwrap();
    let sums = ChunkSums::load(&chunks_path(&a), &image).unwrap();
    assert_eq!(sums.chunk, CHUNK);
    assert_eq!(
        sums.blocks.keys().copied().collect::<Vec<_>>(),
        want.data_blocks
    );
    // The sums are xxh3-64 of the saved bytes, chunk by chunk (hashed by the test).
    let b3 = &want.bytes[(3 * BLOCK) as usize..(4 * BLOCK) as usize];
    let mine: Vec<u64> = b3
        .chunks(CHUNK as usize)
        .map(xxhash_rust::xxh3::xxh3_64)
        .collect();
    assert_eq!(sums.blocks[&3], mine);

    // Another backend's image: its sidecar beside `a` is refused.
    let other = memfd("other").create().unwrap();
    scatter(&other.hold().unwrap(), 42);
    let b = dir.path().join("b.img");
    snapshot::save(&other, &b, &SaveOptions::default(), &Progress::new()).unwrap();
    std::fs::copy(chunks_path(&b), chunks_path(&a)).unwrap();
    let e = ChunkSums::load(&chunks_path(&a), &image).unwrap_err();
    assert!(e.to_string().contains("another image"), "{e}");

    // A save without sums leaves no stale sidecar behind; a chunk size that is not
    // whole 4 KiB pages is refused.
    let none = SaveOptions {
        chunk_size: 0,
        ..SaveOptions::default()
    };
    snapshot::save(&src, &a, &none, &Progress::new()).unwrap();
    assert!(!chunks_path(&a).exists(), "a stale sidecar is left");
    let odd = SaveOptions {
        chunk_size: 5000,
        ..SaveOptions::default()
    };
    let e = snapshot::save(&src, &a, &odd, &Progress::new()).unwrap_err();
    assert!(e.to_string().contains("chunk size"), "{e}");
}

#[test]
fn learned_chunk_sums_serve_a_first_touch_by_one_chunk_and_still_catch_a_flipped_byte() {
    let dir = TempDir::new("lazy-chunks");
    let (image, want) = saved_image(&dir, &memfd, 23);
    // The save's sums gone: run 1 verifies every block whole and learns them.
    std::fs::remove_file(chunks_path(image.path())).unwrap();
    let dst = memfd("dst").create().unwrap();
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, LazyOptions::default()).unwrap();
    assert!(server.wait_timeout(DEADLINE), "the fill did not end");
    let report = server.wait().unwrap();
    assert_eq!(report.chunk_sums.blocks.len(), want.data_blocks.len());
    let path = chunks_path(image.path());
    report.chunk_sums.save(&path, &image).unwrap();
    let sums = Arc::new(ChunkSums::load(&path, &image).unwrap());
    assert_eq!(*sums, report.chunk_sums);

    // Run 2: a first touch in block 4 brings in its chunk, not the 2 MiB block.
    let opts = || LazyOptions {
        background: false,
        chunk_sums: Some(Arc::clone(&sums)),
        ..LazyOptions::default()
    };
    let dst = memfd("dst2").create().unwrap();
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts()).unwrap();
    let off = 4 * BLOCK + 5 * 4096;
    let page = read_page(&dst.hold().unwrap(), off).unwrap();
    assert_eq!(page[..], want.bytes[off as usize..off as usize + 4096]);
    assert_eq!(resident(&dst), CHUNK, "resident after one first touch");
    server.stop().unwrap();

    // Run 3: a flipped byte in the middle of block 4: the chunk at the start is
    // served, the flipped one never.
    let b4 = (4 * BLOCK) as usize;
    let at = find_in_file(image.path(), &want.bytes[b4..b4 + 64]) + BLOCK / 2;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image.path())
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 4], at).unwrap();
    let image = Arc::new(Image::open(image.path()).unwrap());
    let dst = memfd("dst3").create().unwrap();
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts()).unwrap();
    let hold = dst.hold().unwrap();
    let page = read_page(&hold, off).unwrap();
    assert_eq!(page[..], want.bytes[off as usize..off as usize + 4096]);
    assert!(server.progress().errors.is_empty());
    let bad = 4 * BLOCK + BLOCK / 2;
    assert!(
        read_page(&hold, bad).is_err(),
        "the flipped chunk was served"
    );
    assert!(
        server.wait_timeout(Duration::from_secs(1)),
        "no error within 1 s"
    );
    let e = server.stop().unwrap_err();
    assert_eq!(e.block(), Some(4), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}

/// Without sums in its options, a lazy restore reads the ones `save` wrote beside the
/// image by itself — after the memory is usable, so the first touches may still bring
/// in whole blocks; within the deadline a touch of a new block brings in one chunk.
#[test]
fn a_lazy_restore_reads_the_sums_beside_the_image_by_itself() {
    let dir = TempDir::new("lazy-own-chunks");
    let src = memfd("src").create().unwrap();
    let want = scatter(&src.hold().unwrap(), 37);
    let path = dir.path().join("own.img");
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    assert!(chunks_path(&path).exists(), "save wrote no chunk sums");
    let image = Arc::new(Image::open(&path).unwrap());
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let dst = memfd("dst").create().unwrap();
    let data: Vec<u64> = (0..SIZE / BLOCK)
        .filter(|&b| matches!(image.blocks()[b as usize], BlockKind::Data { .. }))
        .collect();
    assert!(data.len() >= 4, "the source has too few data blocks");
    let server = snapshot::restore_lazy(image, &dst, opts).unwrap();
    let hold = dst.hold().unwrap();
    let started = std::time::Instant::now();
    let mut by_chunk = None;
    // Data blocks only: a hole's touch brings in one zero page whatever the sums.
    for block in data {
        let before = resident(&dst);
        let off = block * BLOCK + 3 * 4096;
        read_page(&hold, off).unwrap();
        let grew = resident(&dst) - before;
        if grew > 0 && grew <= CHUNK {
            by_chunk = Some(block);
            break;
        }
        if started.elapsed() > DEADLINE {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        by_chunk.is_some(),
        "no touch brought in a single chunk within {DEADLINE:?}: the sums beside the image were not read"
    );
    within(DEADLINE, "own", move || touch_all(&hold));
    assert_same_bytes(&read_memory(&dst), &want.bytes, "own");
    server.stop().unwrap();
}
