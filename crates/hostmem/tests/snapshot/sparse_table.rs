//! Diff images of format v2: a sparse block table listing only the blocks the diff
//! holds, by index. The file is read by the test itself (preamble, JSON, 24-byte
//! entries); every damage to the table is refused with a reason, never a panic; and a
//! v1 diff (the dense table hostmem wrote before v2) still opens and restores byte for
//! byte.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, BlockKind, Dirty, Image, RestoreOptions, SaveOptions};
use hostmem::snapshot::{SnapshotError, VERSION_DENSE, VERSION_SPARSE};
use hostmem::{Backend, Kind, Progress};
use serde_json::Value;

const SIZE: u64 = 8 * MIB;
const PAGE: u64 = 4096;
/// Pages the diff holds: written with random bytes, and one (`ZEROED`) with zeros.
const WRITTEN: [u64; 5] = [3, 700, 701, 1500, 2047];
/// A page of the base's data written with zeros: a hole the diff lists.
const ZEROED: u64 = 600;

/// A memfd of `SIZE` (the memory is the fd's: its holes read as zeros).
fn memfd(id: &str) -> Backend {
    let b = Backend::builder(Kind::Memfd, id).size(SIZE);
    b.create().unwrap()
}

/// A base of 2 MiB blocks (block 1 and page 5 random bytes), then the pages above
/// written and saved as a 4 KiB-block diff; the memory as the test wrote it.
fn base_and_diff(dir: &TempDir) -> (Image, PathBuf, Vec<u8>) {
    let src = memfd("src");
    let hold = src.hold().unwrap();
    let mut want = vec![0u8; SIZE as usize];
    let mut put = |off: u64, data: &[u8]| {
        hold.write_at(off as usize, data).unwrap();
        want[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(BLOCK, &random_bytes(1, BLOCK as usize));
    put(5 * PAGE, &random_bytes(2, PAGE as usize));
    let base_path = dir.path().join("base.img");
    snapshot::save(&src, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let mut bits = vec![0u64; (SIZE / PAGE / 64) as usize];
    for (n, &p) in WRITTEN.iter().enumerate() {
        put(p * PAGE, &random_bytes(10 + n as u64, PAGE as usize));
        bits[(p / 64) as usize] |= 1 << (p % 64);
    }
    put(ZEROED * PAGE, &[0; PAGE as usize]);
    bits[(ZEROED / 64) as usize] |= 1 << (ZEROED % 64);
    let dirty = Dirty {
        page_size: PAGE,
        bits: &bits,
    };
    let base = Image::open(&base_path).unwrap();
    let diff_path = dir.path().join("diff.img");
    snapshot::save_diff(&src, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    (base, diff_path, want)
}

/// The preamble's version, the JSON header and the file's bytes.
fn read_image(path: &Path) -> (u32, Value, Vec<u8>) {
    let data = std::fs::read(path).unwrap();
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let json_len = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let v = serde_json::from_slice(&data[32..32 + json_len]).unwrap();
    (version, v, data)
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

fn restored_equal(diff: &Image, base: &Image, want: &[u8], what: &str) {
    let dst = memfd("dst");
    let opts = RestoreOptions::default();
    snapshot::restore_diff(diff, base, &dst, &opts, &Progress::new()).unwrap();
    assert_same_bytes(&read_memory(&dst), want, what);
}

#[test]
fn a_diff_is_v2_and_its_table_lists_only_the_blocks_it_holds() {
    let dir = TempDir::new("sparse-v2");
    let (base, diff_path, want) = base_and_diff(&dir);
    let (version, v, data) = read_image(&diff_path);
    assert_eq!(version, 2, "the preamble's version");
    assert_eq!((&v["version"], &v["table"]), (&2.into(), &"sparse".into()));
    let mut listed: Vec<u64> = WRITTEN.into_iter().chain([ZEROED]).collect();
    listed.sort_unstable();
    assert_eq!(v["entries"], listed.len() as u64);
    assert_eq!(v["blocks"], SIZE / PAGE);
    // Each entry: index, xxh3 of the test's own page (0 and kind 0 for the zeroed
    // page), kind, reserved 0; in increasing index order.
    let at = v["table_offset"].as_u64().unwrap() as usize;
    for (n, &p) in listed.iter().enumerate() {
        let e = at + 24 * n;
        assert_eq!(u64_at(&data, e), p, "entry {n}'s index");
        let page = &want[(p * PAGE) as usize..((p + 1) * PAGE) as usize];
        let (sum, kind) = if p == ZEROED {
            (0, 0)
        } else {
            (snapshot::block_checksum(page), 1)
        };
        assert_eq!(u64_at(&data, e + 8), sum, "entry {n}'s checksum");
        assert_eq!(u64_at(&data, e + 16), kind, "entry {n}'s kind and reserved");
    }
    // The memory's bytes start at the next page past the short table.
    let table_end = (at + 24 * listed.len()) as u64;
    assert_eq!(
        v["regions"][0]["file_offset"],
        table_end.next_multiple_of(PAGE)
    );
    let diff = Image::open(&diff_path).unwrap();
    assert_eq!(diff.header().table_len(), 24 * listed.len() as u64);
    restored_equal(&diff, &base, &want, "base + v2 diff");

    // The base, a full image, stays v1: a dense table of 16-byte entries.
    let (version, v, _) = read_image(base.path());
    assert_eq!((version, &v["version"]), (1, &1.into()));
    assert!(
        v.get("table").is_none() && v.get("entries").is_none(),
        "{v}"
    );
    let end = v["table_offset"].as_u64().unwrap() + 16 * v["blocks"].as_u64().unwrap();
    assert_eq!(v["regions"][0]["file_offset"], end.next_multiple_of(BLOCK));
}

/// Rewrites a v2 diff as hostmem wrote diffs before v2: version 1, every block in a
/// dense table of 16-byte entries (kind 2 for the base's), the regions moved past it.
fn densify(path: &Path) {
    let (_, mut v, data) = read_image(path);
    let blocks = v["blocks"].as_u64().unwrap() as usize;
    let at = v["table_offset"].as_u64().unwrap() as usize;
    let mut dense: Vec<(u64, u32)> = vec![(0, 2); blocks];
    for n in 0..v["entries"].as_u64().unwrap() as usize {
        let e = at + 24 * n;
        dense[u64_at(&data, e) as usize] = (u64_at(&data, e + 8), data[e + 16] as u32);
    }
    let table: Vec<u8> = dense
        .iter()
        .flat_map(|&(sum, kind)| [sum.to_le_bytes(), (u64::from(kind)).to_le_bytes()])
        .flatten()
        .collect();
    let old_first = v["regions"][0]["file_offset"].as_u64().unwrap();
    let json_len = u32::from_le_bytes(data[12..16].try_into().unwrap()) as u64;
    // Room for the offsets' digits to grow; every offset moves by a multiple of the
    // block and page size.
    let table_at = (32 + json_len + 64).next_multiple_of(16);
    let align = v["block_size"]
        .as_u64()
        .unwrap()
        .max(v["page_size"].as_u64().unwrap());
    let shift = (table_at + table.len() as u64).next_multiple_of(align);
    let o = v.as_object_mut().unwrap();
    o.remove("table");
    o.remove("entries");
    v["version"] = 1.into();
    v["table_offset"] = table_at.into();
    for r in v["regions"].as_array_mut().unwrap() {
        r["file_offset"] = (r["file_offset"].as_u64().unwrap() + shift).into();
    }
    let json = serde_json::to_vec(&v).unwrap();
    assert!(32 + json.len() as u64 <= table_at);
    let mut sealed = json.clone();
    sealed.extend_from_slice(&table);
    let mut out = b"HOSTMEMI".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&snapshot::block_checksum(&sealed).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&json);
    out.resize(table_at as usize, 0);
    out.extend_from_slice(&table);
    out.resize((old_first + shift) as usize, 0);
    out.extend_from_slice(&data[old_first as usize..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_v1_diff_with_a_dense_table_still_opens_verifies_and_restores() {
    let dir = TempDir::new("sparse-v1");
    let (base, diff_path, want) = base_and_diff(&dir);
    let v2 = Image::open(&diff_path).unwrap();
    let v1_path = dir.path().join("diff-v1.img");
    std::fs::copy(&diff_path, &v1_path).unwrap();
    densify(&v1_path);
    let v1 = Image::open(&v1_path).unwrap();
    let h = v1.header();
    assert_eq!((h.version, h.entries), (VERSION_DENSE, SIZE / PAGE));
    assert_eq!(v2.header().version, VERSION_SPARSE);
    assert_eq!(v1.blocks(), v2.blocks(), "the same blocks, either table");
    let base_blocks = v1.blocks().iter().filter(|b| **b == BlockKind::Base);
    assert_eq!(base_blocks.count() as u64, SIZE / PAGE - 6);
    let checked = v1.verify(0, &Progress::new()).unwrap();
    assert_eq!(checked.data_blocks, WRITTEN.len() as u64);
    restored_equal(&v1, &base, &want, "base + v1 diff");
    restored_equal(&v2, &base, &want, "base + v2 diff");
}

/// Opens the image expecting a format error whose reason contains `reason`.
fn refused(path: &Path, reason: &str, what: &str) {
    match Image::open(path) {
        Err(e @ SnapshotError::Format { .. }) => {
            assert!(e.to_string().contains(reason), "{what}: {e}")
        }
        Err(e) => panic!("{what}: not a format error: {e}"),
        Ok(_) => panic!("{what}: opened"),
    }
}

#[test]
fn each_damage_to_a_sparse_table_is_refused_with_its_reason() {
    let dir = TempDir::new("sparse-hostile");
    let (_, path, _) = base_and_diff(&dir);
    let good = std::fs::read(&path).unwrap();
    let first = read_image(&path).1["regions"][0]["file_offset"]
        .as_u64()
        .unwrap();
    let blocks = SIZE / PAGE;
    let m = WRITTEN.len() + 1;
    // Table edits: bytes written at offsets of the stored table.
    let index = |n: usize, i: u64| (24 * n, i.to_le_bytes().to_vec());
    let kind = |n: usize, k: u32| (24 * n + 16, k.to_le_bytes().to_vec());
    let table_cases = [
        (
            "entries 0 and 1 swapped",
            vec![index(0, 600), index(1, 3)],
            "entry 1 names block 3: its indices are not strictly increasing".to_string(),
        ),
        (
            "entry 2 a duplicate of entry 1",
            vec![index(2, 600)],
            "entry 2 names block 600: its indices are not strictly increasing".into(),
        ),
        (
            "the last entry past the blocks",
            vec![index(m - 1, blocks)],
            format!("names block {blocks}, past the image's {blocks} blocks"),
        ),
        (
            "an index of u64::MAX",
            vec![index(0, u64::MAX)],
            "past the image's".into(),
        ),
        (
            "an unknown kind",
            vec![kind(3, 7)],
            "block 701 has unknown kind 7".into(),
        ),
        (
            "a listed base block",
            vec![kind(0, 2)],
            "lists block 3 as the base's".into(),
        ),
    ];
    for (what, writes, reason) in &table_cases {
        std::fs::write(&path, &good).unwrap();
        let edit = |t: &mut Vec<u8>| {
            for (at, bytes) in writes {
                t[*at..*at + bytes.len()].copy_from_slice(bytes);
            }
        };
        reseal_with(&path, |_| {}, edit);
        refused(&path, reason, what);
    }

    // The header's count of entries against the blocks, the layout and the table.
    let header_cases = [
        (
            blocks + 1,
            format!("table of {} entries for {blocks} blocks", blocks + 1),
        ),
        (u64::MAX, "table of".into()),
        // Past the first region's start: the table would overlap the memory's bytes.
        (first / 24 + 1, "overlaps the table".into()),
        // One more than written: the zeros after the table read as an entry for
        // block 0, after block 2047.
        (
            m as u64 + 1,
            format!("entry {m} names block 0: its indices are not"),
        ),
    ];
    for (entries, reason) in &header_cases {
        std::fs::write(&path, &good).unwrap();
        reseal(&path, |v| v["entries"] = (*entries).into());
        refused(&path, reason, &format!("entries {entries}"));
    }
    type Edit = fn(&mut Value);
    let json_cases: [(&str, Edit, &str); 3] = [
        (
            "no table",
            |v| drop(v.as_object_mut().unwrap().remove("table")),
            "a version 2 header with table null",
        ),
        (
            "a dense v2 table",
            |v| v["table"] = "dense".into(),
            "a version 2 header with table \"dense\"",
        ),
        (
            "no entries",
            |v| drop(v.as_object_mut().unwrap().remove("entries")),
            "no number \"entries\"",
        ),
    ];
    for (what, edit, reason) in json_cases {
        std::fs::write(&path, &good).unwrap();
        reseal(&path, edit);
        refused(&path, reason, what);
    }

    // The preamble's version decides before the header is read; the header must agree.
    for (pre, reason) in [
        (1u32, "the preamble says format version 1, the header 2"),
        (
            3,
            "image format version 3; this hostmem reads versions 1 and 2",
        ),
    ] {
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&pre.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        refused(&path, reason, &format!("preamble version {pre}"));
    }

    // Hostile numbers in the v2 header's fields: refused or read, never a panic.
    for x in [0u64, 1, 5, 6, 7, 4096, 1 << 40, u64::MAX] {
        for f in ["entries", "blocks", "table_offset"] {
            std::fs::write(&path, &good).unwrap();
            reseal(&path, |v| v[f] = x.into());
            let _ = Image::open(&path).map(|i| i.verify(1, &Progress::new()));
        }
    }
    // The untouched diff, resealed, still opens: the edits above were what was refused.
    std::fs::write(&path, &good).unwrap();
    reseal(&path, |_| {});
    assert_eq!(Image::open(&path).unwrap().header().entries, m as u64);
}
