//! The recorded touch order: which blocks a lazy restore's faults touched first, kept in
//! a small sidecar file beside the image so the next lazy restore fills them first.
//!
//! Why a sidecar and not an image section: the image is written once and then shared
//! read-only (private-mapping clones map it; hostmem never writes an image in place),
//! while the order is rewritten after every run. Format (`docs/snapshot.md`): the
//! sidecar preamble (`sidecar.rs`, magic `HOSTMEMO`) with one field, the number of
//! entries n u64, then n block indices u64, little-endian.

use std::path::{Path, PathBuf};

use super::super::image::Image;
use super::super::Result;
use super::sidecar::Kind;

const ORDER: Kind = Kind {
    magic: *b"HOSTMEMO",
    fields: 1,
    what: "touch order",
};

/// Where the order of `image` is kept by default: the image's path with `.order`
/// appended (`mem.img.order`).
pub fn order_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".order");
    PathBuf::from(p)
}

/// Writes `touched` (block indices, first touch first) as the order of `image` to
/// `path`, through a temporary file renamed over it, so a reader never sees half a file.
pub fn save_order(path: &Path, image: &Image, touched: &[u64]) -> Result<()> {
    let entries: Vec<u8> = touched.iter().flat_map(|b| b.to_le_bytes()).collect();
    let n = touched.len() as u64;
    ORDER.save(path, image, &[n], &entries, "writing the touch order")
}

/// Reads the order saved for `image` at `path`: refused (with the reason) when it is
/// not an order file, is damaged, or was recorded for another image.
pub fn load_order(path: &Path, image: &Image) -> Result<Vec<u64>> {
    let (fields, entries) = ORDER.load(path, image, "reading the touch order")?;
    if Some(entries.len() as u64) != fields[0].checked_mul(8) {
        return Err(ORDER.bad(path, "the touch order's length does not match its count"));
    }
    let blocks = image.header().blocks;
    let order: Vec<u64> = entries
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    if order.iter().any(|&b| b >= blocks) {
        return Err(ORDER.bad(path, "the touch order names a block past the image's table"));
    }
    Ok(order)
}
