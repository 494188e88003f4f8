//! Bad images and awkward targets: a flipped byte, a truncated file, a file that is no
//! image, a backend of another size, a restore over memory that holds data, a raw
//! Firecracker-style file read with its layout given.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, Image, RawRegion, RestoreOptions, SaveOptions, SnapshotError};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;

fn memfd(id: &str) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(SIZE)
        .create()
        .unwrap()
}

/// A saved image of a scattered memfd, and what was written.
fn saved(dir: &TempDir) -> (std::path::PathBuf, Expected) {
    let path = dir.path().join("mem.img");
    let src = memfd("src");
    let want = scatter(&src.hold().unwrap(), 5);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    (path, want)
}

fn block_bytes(b: &Backend, block: u64) -> Vec<u8> {
    let all = read_memory(b);
    all[(block * BLOCK) as usize..((block + 1) * BLOCK) as usize].to_vec()
}

/// Block 4 is random data: finds it in the file by its bytes and flips one in its middle.
fn flip_block_4(path: &std::path::Path, want: &Expected) {
    let b4 = (4 * BLOCK) as usize;
    let at = find_in_file(path, &want.bytes[b4..b4 + 64]) + BLOCK / 2;
    flip_byte(path, at);
}

#[test]
fn a_flipped_byte_fails_restore_naming_the_block_and_its_bytes_never_reach_memory() {
    let dir = TempDir::new("flip");
    let (path, want) = saved(&dir);
    flip_block_4(&path, &want);

    let image = Image::open(&path).unwrap();
    let e = Image::verify(&image, 0, &Progress::new()).unwrap_err();
    assert_eq!(e.block(), Some(4), "verify: {e}");
    let dst = memfd("dst");
    let e = snapshot::restore(
        &image,
        &dst,
        &RestoreOptions { threads: 1 },
        &Progress::new(),
    )
    .unwrap_err();
    assert_eq!(e.block(), Some(4), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("block 4 (backend offset 0x800000, page 2048): checksum mismatch"),
        "{msg}"
    );
    assert!(
        block_bytes(&dst, 4).iter().all(|&b| b == 0),
        "the memory received bytes of the corrupt block"
    );
}

/// A restore is read straight into the memory and checked there: a bad block's bytes
/// land before its checksum is known. Over memory in use, on every kind, the failed
/// restore must leave that block reading zeros (neither the image's wrong bytes nor the
/// old ones) with its pages freed, the blocks one thread restored before it holding the
/// image's bytes, and the blocks after it their old bytes (docs/snapshot.md).
#[test]
fn a_failed_restore_over_memory_in_use_leaves_the_bad_block_zero_and_freed() {
    let dir = TempDir::new("flip-over");
    let (path, want) = saved(&dir);
    flip_block_4(&path, &want);
    let image = Image::open(&path).unwrap();
    let pool = PoolGuard::try_set(2 * MIB, SIZE / (2 * MIB)).ok();
    let mut kinds = vec![
        ("memfd", Backend::builder(Kind::Memfd, "dst")),
        ("ram", Backend::builder(Kind::Ram, "dst")),
        (
            "ram share=on",
            Backend::builder(Kind::Ram, "dst").share(true),
        ),
    ];
    if pool.is_some() {
        let b = Backend::builder(Kind::Memfd, "dst").hugetlb(true);
        kinds.push(("hugetlb memfd", b.hugetlbsize(2 * MIB)));
    } else {
        eprintln!("hugetlb memfd skipped: the kernel could not make the huge pages");
    }
    // Blocks before block 4 that the image has as holes are cleared too.
    let holes_before = (0..4).filter(|b| !want.data_blocks.contains(b)).count() as u64;
    for (what, builder) in kinds {
        let dst = builder.size(SIZE).create().unwrap();
        let old = random_bytes(77, SIZE as usize);
        dst.hold().unwrap().write_at(0, &old).unwrap();
        let one = RestoreOptions { threads: 1 };
        let e = snapshot::restore(&image, &dst, &one, &Progress::new()).unwrap_err();
        assert_eq!(e.block(), Some(4), "{what}: {e}");
        // smaps before the bytes are read (a read could fault a page back in); hugetlb
        // pages are not counted in Rss.
        if !what.starts_with("hugetlb") {
            assert_eq!(
                rss(&dst),
                SIZE - (1 + holes_before) * BLOCK,
                "{what}: smaps Rss: block 4's pages were not freed"
            );
        }
        let got = read_memory(&dst);
        let (b4, b5) = ((4 * BLOCK) as usize, (5 * BLOCK) as usize);
        assert!(
            got[b4..b5].iter().all(|&b| b == 0),
            "{what}: block 4 does not read as zeros after the failed restore"
        );
        assert_same_bytes(&got[..b4], &want.bytes[..b4], what);
        assert_same_bytes(&got[b5..], &old[b5..], what);
    }
}

#[test]
fn a_truncated_image_fails_restore_naming_the_block_and_its_bytes_never_reach_memory() {
    let dir = TempDir::new("trunc");
    let (path, want) = saved(&dir);
    // The last block is data: cut the file in its middle.
    let last = SIZE / BLOCK - 1;
    let at = (last * BLOCK) as usize;
    let start = find_in_file(&path, &want.bytes[at..at + 64]);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(start + BLOCK / 2)
        .unwrap();

    let image = Image::open(&path).unwrap();
    let dst = memfd("dst");
    let e =
        snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap_err();
    assert_eq!(e.block(), Some(last), "{e}");
    assert!(e.to_string().contains("short read"), "{e}");
    assert!(
        block_bytes(&dst, last).iter().all(|&b| b == 0),
        "the memory received bytes of the truncated block"
    );
}

#[test]
fn files_that_are_not_v1_images_are_refused_with_the_reason() {
    let dir = TempDir::new("notimage");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, random_bytes(1, 8192)).unwrap();
    let e = Image::open(&junk).unwrap_err();
    assert!(e.to_string().contains("not a hostmem image"), "{e}");

    let (path, _) = saved(&dir);
    // A newer version.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    let e = Image::open(&path).unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
    // A flipped byte in the JSON header: the header checksum catches it.
    f.write_all_at(&1u32.to_le_bytes(), 8).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 40).unwrap();
    f.write_all_at(&[b[0] ^ 1], 40).unwrap();
    assert!(matches!(
        Image::open(&path),
        Err(SnapshotError::Format { .. })
    ));
    // Cut inside the header.
    f.set_len(20).unwrap();
    assert!(matches!(
        Image::open(&path),
        Err(SnapshotError::Format { .. })
    ));
}

#[test]
fn restore_into_a_backend_of_another_size_is_refused_before_any_write() {
    let dir = TempDir::new("size");
    let (path, _) = saved(&dir);
    let image = Image::open(&path).unwrap();
    let small = Backend::builder(Kind::Memfd, "small")
        .size(SIZE / 2)
        .create()
        .unwrap();
    let e = snapshot::restore(&image, &small, &RestoreOptions::default(), &Progress::new())
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Mismatch(_)), "{e}");
    assert_eq!(rss(&small), 0, "a refused restore wrote memory");
}

#[test]
fn restore_over_memory_in_use_clears_what_the_image_has_as_holes() {
    for kind in [Kind::Ram, Kind::Memfd] {
        let dir = TempDir::new("over");
        let path = dir.path().join("mem.img");
        let src = Backend::builder(kind, "src").size(SIZE).create().unwrap();
        let want = scatter(&src.hold().unwrap(), 9);
        snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
        // The target holds other bytes everywhere, holes of the image included.
        let dst = Backend::builder(kind, "dst").size(SIZE).create().unwrap();
        dst.hold()
            .unwrap()
            .write_at(0, &random_bytes(77, SIZE as usize))
            .unwrap();
        let image = Image::open(&path).unwrap();
        snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
        assert_same_bytes(&read_memory(&dst), &want.bytes, kind.qom_type());
    }
}

#[test]
fn a_raw_memory_file_restores_with_its_layout_given() {
    // Firecracker's memory file: guest regions back to back. Two regions of a 32 MiB
    // backend, 8 MiB at offset 0 and 8 MiB at 16 MiB, written by the test with holes.
    let dir = TempDir::new("raw");
    let path = dir.path().join("raw.mem");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(16 * MIB).unwrap();
    let a = random_bytes(31, 4096);
    let b = random_bytes(32, (3 * MIB) as usize);
    f.write_all_at(&a, 4096).unwrap();
    f.write_all_at(&b, 9 * MIB).unwrap();
    let layout = [
        RawRegion {
            backend_offset: 0,
            len: 8 * MIB,
        },
        RawRegion {
            backend_offset: 16 * MIB,
            len: 8 * MIB,
        },
    ];
    let image = Image::open_raw(&path, &layout, SIZE, 4096).unwrap();
    let dst = memfd("dst");
    snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    want[4096..8192].copy_from_slice(&a);
    let at = (17 * MIB) as usize; // file offset 9 MiB is 1 MiB into the second region
    want[at..at + b.len()].copy_from_slice(&b);
    assert_same_bytes(&read_memory(&dst), &want, "raw");
}

#[test]
fn cancel_stops_a_save_with_an_error() {
    let dir = TempDir::new("cancel");
    let src = memfd("src");
    scatter(&src.hold().unwrap(), 1);
    let p = Progress::new();
    p.cancel();
    let e =
        snapshot::save(&src, dir.path().join("x.img"), &SaveOptions::default(), &p).unwrap_err();
    assert!(matches!(e, SnapshotError::Cancelled), "{e}");
    assert!(
        Image::open(dir.path().join("x.img")).is_err(),
        "a cancelled save left an image"
    );
}

#[test]
fn hostile_header_numbers_are_refused_or_read_never_a_panic() {
    let dir = TempDir::new("hostile");
    let (path, _) = saved(&dir);
    let good = std::fs::read(&path).unwrap();
    let values = [
        0u64,
        1,
        4095,
        4096,
        1 << 21,
        1 << 40,
        u64::MAX / 2,
        u64::MAX,
    ];
    let fields = [
        "block_size",
        "page_size",
        "backend_len",
        "table_offset",
        "blocks",
    ];
    let region_fields = ["backend_offset", "len", "file_offset", "first_block"];
    let mut tried = 0;
    for &x in &values {
        for f in fields {
            std::fs::write(&path, &good).unwrap();
            reseal(&path, |v| v[f] = x.into());
            let _ = Image::open(&path).map(|i| i.verify(1, &Progress::new()));
            tried += 1;
        }
        for f in region_fields {
            std::fs::write(&path, &good).unwrap();
            reseal(&path, |v| v["regions"][0][f] = x.into());
            let _ = Image::open(&path).map(|i| i.verify(1, &Progress::new()));
            tried += 1;
        }
    }
    // The unchanged header, resealed, still opens: the edits above were reached.
    std::fs::write(&path, &good).unwrap();
    reseal(&path, |_| {});
    assert!(Image::open(&path).is_ok(), "after {tried} hostile headers");
    // A block as large as the region: one 32 MiB block, one thread's buffer.
    reseal(&path, |v| {
        v["block_size"] = (1u64 << 30).into();
        v["blocks"] = 1.into();
    });
    let big = Image::open(&path).unwrap();
    let e = big.verify(1, &Progress::new()).unwrap_err();
    assert_eq!(e.block(), Some(0), "{e}");
    std::fs::write(&path, &good).unwrap();
    // A region past the backend is named as such.
    reseal(&path, |v| v["regions"][0]["len"] = (2 * SIZE).into());
    let e = Image::open(&path).unwrap_err();
    assert!(e.to_string().contains("past the backend's end"), "{e}");
}

/// A save onto a file system that fills up: the writer's ENOSPC comes back as the
/// error, naming a block, within the deadline (the copying threads wait for the
/// writer's buffers; none may be left waiting once it has failed), and the earlier
/// image of that name stays as it was, with no partial file beside it.
#[test]
fn a_save_onto_a_full_file_system_fails_with_enospc_and_keeps_the_earlier_image() {
    let fs = mount_tmpfs("12m");
    let path = fs.path().join("mem.img");
    let small = Backend::builder(Kind::Memfd, "small")
        .size(4 * MIB)
        .create()
        .unwrap();
    small
        .hold()
        .unwrap()
        .write_at(0, &random_bytes(8, 4 * MIB as usize))
        .unwrap();
    snapshot::save(&small, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let before = std::fs::read(&path).unwrap();

    // 32 MiB of random bytes cannot fit in what is left of 12 MiB.
    let src = memfd("src");
    src.hold()
        .unwrap()
        .write_at(0, &random_bytes(9, SIZE as usize))
        .unwrap();
    let p = path.clone();
    let err = crate::lazy::within(
        crate::lazy::DEADLINE,
        "a save onto a full tmpfs",
        move || snapshot::save(&src, &p, &SaveOptions::default(), &Progress::new()).unwrap_err(),
    );
    match &err {
        SnapshotError::Block {
            index,
            fault: snapshot::BlockFault::Write(e),
            ..
        } => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{err}");
            assert!(*index < SIZE / BLOCK, "{err}");
        }
        other => panic!("not a write failure of a block: {other}"),
    }
    assert!(err.to_string().contains("write failed"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the earlier image");
    let mut names: Vec<String> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["mem.img", "mem.img.chunks"], "files left");
}
