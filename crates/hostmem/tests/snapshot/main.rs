//! Snapshot images checked against the kernel and the bytes: every restored byte is
//! compared with what the test itself wrote, read back through /proc/self/mem; holes
//! are judged by smaps Rss and the image file's st_blocks; corrupt and truncated
//! images must fail naming the block while the memory never sees its bytes.

#[path = "../common/mod.rs"]
mod common;

mod diff;
mod diff_blocks;
mod faults;
mod hugetlb_holes;
mod lazy;
mod lazy_chain;
mod lazy_chunks;
mod lazy_faults;
mod lazy_share;
mod placed;
mod private;
mod round_trip;
mod sparse_table;

use std::fs::File;
use std::os::unix::fs::FileExt;

use common::*;
use hostmem::{Backend, InUse};

pub const BLOCK: u64 = 2 * MIB;

/// The test's own random bytes (xorshift64*), so the checks owe nothing to hostmem.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What the test wrote into a backend, byte for byte (zeros elsewhere).
pub struct Expected {
    pub bytes: Vec<u8>,
    /// 2 MiB blocks holding any non-zero byte.
    pub data_blocks: Vec<u64>,
}

/// Writes random bytes into scattered blocks of `hold`: whole blocks, one lone page
/// in a block, and a block written and then zeroed again (present but all zero).
pub fn scatter(hold: &InUse, seed: u64) -> Expected {
    let len = hold.len();
    let blocks = len as u64 / BLOCK;
    let mut bytes = vec![0u8; len];
    let mut data_blocks = Vec::new();
    let mut put = |off: usize, data: &[u8]| {
        hold.write_at(off, data).unwrap();
        bytes[off..off + data.len()].copy_from_slice(data);
    };
    for (n, b) in [0, 3, 4, blocks - 1].into_iter().enumerate() {
        put(
            (b * BLOCK) as usize,
            &random_bytes(seed + n as u64, BLOCK as usize),
        );
        data_blocks.push(b);
    }
    // One page in the middle of block 6.
    let lone = (6 * BLOCK + 5 * 4096) as usize;
    put(lone, &random_bytes(seed + 100, 4096));
    data_blocks.push(6);
    // Block 8: written, then zeroed: resident but all zero, a hole in the image.
    hold.write_at(
        (8 * BLOCK) as usize,
        &random_bytes(seed + 200, BLOCK as usize),
    )
    .unwrap();
    hold.fill((8 * BLOCK) as usize, BLOCK as usize, 0).unwrap();
    data_blocks.sort_unstable();
    Expected { bytes, data_blocks }
}

/// The backend's bytes, read through /proc/self/mem (not through hostmem).
pub fn read_memory(b: &Backend) -> Vec<u8> {
    let mem = File::open("/proc/self/mem").unwrap();
    let mut out = vec![0u8; b.mapped_len().unwrap()];
    mem.read_exact_at(&mut out, b.host_addr().unwrap() as u64)
        .unwrap();
    out
}

/// Asserts equal bytes, naming the first differing offset and its 2 MiB block.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at offset {i:#x} (block {}): {:#04x} != {:#04x}",
            i as u64 / BLOCK,
            got[i],
            want[i]
        );
    }
}

/// Resident bytes of the backend's mapping, as smaps says.
pub fn rss(b: &Backend) -> u64 {
    smaps_rss(b.host_addr().unwrap(), b.mapped_len().unwrap())
}

/// Offset of `needle` in the file (the test finds its own bytes, not hostmem's layout).
pub fn find_in_file(path: &std::path::Path, needle: &[u8]) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len())
        .position(|w| w == needle)
        .expect("the test's bytes are in the image") as u64
}

/// Inverts the byte at `at` of the file (a corruption the test makes itself).
pub fn flip_byte(path: &std::path::Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();
}

/// Bytes of the table an image's JSON header says it stores: 24 × `entries` for a v2
/// (sparse) table, 16 × `blocks` for v1 (saturating: hostile numbers are fed in here).
pub fn table_bytes(v: &serde_json::Value) -> usize {
    let (entry, n) = if v["version"] == 2 {
        (24, &v["entries"])
    } else {
        (16, &v["blocks"])
    };
    usize::try_from(n.as_u64().unwrap_or(0).saturating_mul(entry)).unwrap_or(usize::MAX)
}

/// Rewrites an image's header JSON through `edit` and seals it again with a valid
/// preamble checksum (xxh3 of JSON then table), so the reader's own checks are reached.
pub fn reseal(path: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    reseal_with(path, edit, |_| {});
}

/// [`reseal`], the stored table's bytes also rewritten through `edit_table` (in place:
/// the same length). The checksum covers the bytes the edited header makes a reader
/// read as its table, as far as the file goes, whatever they are.
pub fn reseal_with(
    path: &std::path::Path,
    edit: impl Fn(&mut serde_json::Value),
    edit_table: impl Fn(&mut Vec<u8>),
) {
    let data = std::fs::read(path).unwrap();
    let json_len = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let mut v: serde_json::Value = serde_json::from_slice(&data[32..32 + json_len]).unwrap();
    let table_at = v["table_offset"].as_u64().unwrap() as usize;
    let table_end = table_at.saturating_add(table_bytes(&v)).min(data.len());
    let mut table = data[table_at..table_end].to_vec();
    edit(&mut v);
    edit_table(&mut table);
    let json = serde_json::to_vec(&v).unwrap();
    let mut out = data[..32].to_vec();
    out[12..16].copy_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(table_at.max(out.len()), 0);
    out.truncate(table_at.max(32 + json.len()));
    let at = out.len();
    out.extend_from_slice(&table);
    out.extend_from_slice(&data[table_end..]);
    let read = table_bytes(&v).min(out.len() - at);
    let mut sealed = json.clone();
    sealed.extend_from_slice(&out[at..at + read]);
    let sum = hostmem::snapshot::block_checksum(&sealed);
    out[16..24].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(path, out).unwrap();
}
