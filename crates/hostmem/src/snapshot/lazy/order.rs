//! The recorded touch order: which blocks a lazy restore's faults touched first, kept in
//! a small sidecar file beside the image so the next lazy restore fills them first.
//!
//! Why a sidecar and not an image section: the image is written once and then shared
//! read-only (private-mapping clones map it; hostmem never writes an image in place),
//! while the order is rewritten after every run. Format (`docs/snapshot.md`), all
//! little-endian: magic `HOSTMEMO`, version u32 = 1, reserved u32, the image's header
//! checksum u64 (0 for a raw file), the image's block count u64, the number of entries
//! n u64, xxh3-64 of the entries u64, then n block indices u64.

use std::path::{Path, PathBuf};

use super::super::image::Image;
use super::super::{Result, SnapshotError};

const MAGIC: [u8; 8] = *b"HOSTMEMO";
const VERSION: u32 = 1;
const HEAD: usize = 48;

/// Where the order of `image` is kept by default: the image's path with `.order`
/// appended (`mem.img.order`).
pub fn order_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".order");
    PathBuf::from(p)
}

fn checksum(entries: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(entries)
}

/// Writes `touched` (block indices, first touch first) as the order of `image` to
/// `path`, through a temporary file renamed over it, so a reader never sees half a file.
pub fn save_order(path: &Path, image: &Image, touched: &[u64]) -> Result<()> {
    let entries: Vec<u8> = touched.iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(HEAD + entries.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&image.checksum().to_le_bytes());
    out.extend_from_slice(&image.header().blocks.to_le_bytes());
    out.extend_from_slice(&(touched.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&entries).to_le_bytes());
    out.extend_from_slice(&entries);
    let io = |source| SnapshotError::Io {
        what: "writing the touch order",
        path: path.to_path_buf(),
        source,
    };
    let tmp = order_path(&path.with_extension("tmp"));
    std::fs::write(&tmp, &out).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the order saved for `image` at `path`: refused (with the reason) when it is
/// not an order file, is damaged, or was recorded for another image.
pub fn load_order(path: &Path, image: &Image) -> Result<Vec<u64>> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        what: "reading the touch order",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: &str| SnapshotError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.len() < HEAD || bytes[..8] != MAGIC {
        return Err(bad("not a touch order file (no HOSTMEMO magic)"));
    }
    if bytes[8..12] != VERSION.to_le_bytes() {
        return Err(bad("touch order version other than 1"));
    }
    if u64_at(16) != Some(image.checksum()) || u64_at(24) != Some(image.header().blocks) {
        return Err(bad("the touch order was recorded for another image"));
    }
    let n = u64_at(32).unwrap_or(0);
    let entries = &bytes[HEAD..];
    if Some(entries.len() as u64) != n.checked_mul(8) {
        return Err(bad("the touch order's length does not match its count"));
    }
    if u64_at(40) != Some(checksum(entries)) {
        return Err(bad("the touch order's checksum does not match"));
    }
    let blocks = image.header().blocks;
    let order: Vec<u64> = entries
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    if order.iter().any(|&b| b >= blocks) {
        return Err(bad("the touch order names a block past the image's table"));
    }
    Ok(order)
}
