//! Diff images: only blocks the test's own dirty bitmap marks are saved; a restore of
//! diff + base gives the memory as it was at the diff, byte for byte.

use std::os::unix::fs::MetadataExt;

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, Dirty, Image, RestoreOptions, SaveOptions, SnapshotError};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;

/// Marks `[off, off+len)` dirty in a 4 KiB-page bitmap.
fn mark(bits: &mut [u64], off: u64, len: u64) {
    for p in off / 4096..(off + len).div_ceil(4096) {
        bits[(p / 64) as usize] |= 1 << (p % 64);
    }
}

#[test]
fn a_diff_holds_only_dirty_blocks_and_restores_with_its_base() {
    let dir = TempDir::new("diff");
    let (base_path, diff_path) = (dir.path().join("base.img"), dir.path().join("diff.img"));
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let hold = src.hold().unwrap();
    let mut want = scatter(&hold, 41).bytes;
    snapshot::save(&src, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();

    // After the base: block 4 rewritten, block 3 zeroed, one page of block 12 written,
    // all marked dirty; block 0 rewritten WITHOUT a mark, so the diff must not have it
    // and the restore gives the base's block 0.
    let mut bits = vec![0u64; (SIZE / 4096 / 64) as usize];
    let mut put = |off: u64, data: &[u8], dirty: bool| {
        hold.write_at(off as usize, data).unwrap();
        if dirty {
            mark(&mut bits, off, data.len() as u64);
            want[off as usize..off as usize + data.len()].copy_from_slice(data);
        }
    };
    put(4 * BLOCK, &random_bytes(50, BLOCK as usize), true);
    put(3 * BLOCK, &vec![0u8; BLOCK as usize], true);
    put(12 * BLOCK + 8192, &random_bytes(51, 4096), true);
    put(0, &random_bytes(52, BLOCK as usize), false);

    let base = Image::open(&base_path).unwrap();
    let dirty = Dirty {
        page_size: 4096,
        bits: &bits,
    };
    snapshot::save_diff(&src, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    // Two data blocks (4 and 12) on disk; block 3 is a hole now.
    let on_disk = std::fs::metadata(&diff_path).unwrap().blocks() * 512;
    assert!(
        on_disk <= 2 * BLOCK + 16 * 1024,
        "the diff takes {on_disk} bytes on disk for 2 dirty data blocks"
    );

    let diff = Image::open(&diff_path).unwrap();
    let dst = Backend::builder(Kind::Memfd, "dst")
        .size(SIZE)
        .create()
        .unwrap();
    let e =
        snapshot::restore(&diff, &dst, &RestoreOptions::default(), &Progress::new()).unwrap_err();
    assert!(matches!(e, SnapshotError::Mismatch(_)), "{e}");
    assert_eq!(rss(&dst), 0, "a refused restore wrote memory");

    snapshot::restore_diff(
        &diff,
        &base,
        &dst,
        &RestoreOptions::default(),
        &Progress::new(),
    )
    .unwrap();
    assert_same_bytes(&read_memory(&dst), &want, "diff + base");

    // Another image is not its base, even of the same layout.
    let other = dir.path().join("other.img");
    snapshot::save(&src, &other, &SaveOptions::default(), &Progress::new()).unwrap();
    let other = Image::open(&other).unwrap();
    let e = snapshot::restore_diff(
        &diff,
        &other,
        &dst,
        &RestoreOptions::default(),
        &Progress::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not the base of"), "{e}");
}

#[test]
fn a_corrupt_base_block_fails_a_diff_restore_naming_the_block() {
    let dir = TempDir::new("diff-bad-base");
    let (base_path, diff_path) = (dir.path().join("base.img"), dir.path().join("diff.img"));
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let want = scatter(&src.hold().unwrap(), 43);
    snapshot::save(&src, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let bits = vec![0u64; (SIZE / 4096 / 64) as usize];
    let base = Image::open(&base_path).unwrap();
    let dirty = Dirty {
        page_size: 4096,
        bits: &bits,
    };
    snapshot::save_diff(&src, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    // Flip a byte of block 3 in the base (the diff leaves block 3 to it).
    let b3 = (3 * BLOCK) as usize;
    let at = find_in_file(&base_path, &want.bytes[b3..b3 + 64]) + 4096;
    flip_byte(&base_path, at);

    let (base, diff) = (
        Image::open(&base_path).unwrap(),
        Image::open(&diff_path).unwrap(),
    );
    let dst = Backend::builder(Kind::Memfd, "dst")
        .size(SIZE)
        .create()
        .unwrap();
    let e = snapshot::restore_diff(
        &diff,
        &base,
        &dst,
        &RestoreOptions { threads: 1 },
        &Progress::new(),
    )
    .unwrap_err();
    assert_eq!(e.block(), Some(3), "{e}");
    let named = format!("{}: block 3 ", base_path.display());
    assert!(
        e.to_string().starts_with(&named),
        "not the base's file: {e}"
    );
    let mem = read_memory(&dst);
    assert!(
        mem[b3..b3 + BLOCK as usize].iter().all(|&b| b == 0),
        "the memory received the corrupt base block"
    );
}

#[test]
fn a_chain_of_diffs_restores_the_memory_as_at_the_last_diff() {
    let dir = TempDir::new("diff-chain");
    let path = |n: &str| dir.path().join(n);
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let hold = src.hold().unwrap();
    let mut want = scatter(&hold, 61).bytes;
    snapshot::save(
        &src,
        path("base.img"),
        &SaveOptions::default(),
        &Progress::new(),
    )
    .unwrap();
    let base = Image::open(path("base.img")).unwrap();

    // Each diff: what was written since the image before it, marked in a fresh bitmap.
    let mut diff = |name: &str, on: &Image, writes: &[(u64, Vec<u8>)]| {
        let mut bits = vec![0u64; (SIZE / 4096 / 64) as usize];
        for (off, data) in writes {
            hold.write_at(*off as usize, data).unwrap();
            mark(&mut bits, *off, data.len() as u64);
            want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        let dirty = Dirty {
            page_size: 4096,
            bits: &bits,
        };
        snapshot::save_diff(&src, on, &dirty, path(name), &Progress::new()).unwrap();
        Image::open(path(name)).unwrap()
    };
    // d1 rewrites blocks 2 and 5; d2 zeroes block 2 again and writes a page of block 9.
    let d1 = diff(
        "d1.img",
        &base,
        &[
            (2 * BLOCK, random_bytes(62, BLOCK as usize)),
            (5 * BLOCK, random_bytes(63, BLOCK as usize)),
        ],
    );
    let d2 = diff(
        "d2.img",
        &d1,
        &[
            (2 * BLOCK, vec![0u8; BLOCK as usize]),
            (9 * BLOCK + 4096, random_bytes(64, 4096)),
        ],
    );
    let dst = Backend::builder(Kind::Memfd, "dst")
        .size(SIZE)
        .create()
        .unwrap();
    let opts = RestoreOptions::default();
    // A link left out: d2 was taken against d1, not the base; nothing is written.
    let e = snapshot::restore_chain(&[&base, &d2], &dst, &opts, &Progress::new()).unwrap_err();
    assert!(e.to_string().contains("is not the base of"), "{e}");
    let e = snapshot::restore_chain(&[&d1, &d2], &dst, &opts, &Progress::new()).unwrap_err();
    assert!(
        e.to_string().contains("a chain starts with a full image"),
        "{e}"
    );
    assert_eq!(rss(&dst), 0, "a refused chain wrote memory");

    snapshot::restore_chain(&[&base, &d1, &d2], &dst, &opts, &Progress::new()).unwrap();
    assert_same_bytes(&read_memory(&dst), &want, "base + d1 + d2");
    let on_disk = std::fs::metadata(path("d2.img")).unwrap().blocks() * 512;
    assert!(
        on_disk <= BLOCK + 16 * 1024,
        "d2 takes {on_disk} bytes on disk"
    );
}
