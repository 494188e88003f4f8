//! Chunk checksums: an xxh3-64 for every chunk (`CHUNK` bytes when `save` writes them)
//! of each data block, kept in a sidecar file beside the image (`FILE.chunks`) so a lazy
//! restore serves a first touch by reading and checking one chunk instead of the whole
//! 2 MiB block. `save` writes them with the image (hashing bytes it has read anyway);
//! a lazy restore of an image without them learns them from the blocks it verified
//! whole, for the next restore.
//!
//! A sidecar and not the image itself: the image format stays version 1 for every
//! reader and tool, and a sidecar that is lost, damaged or another image's is refused
//! and the restore falls back to whole blocks. Format (`docs/snapshot.md`): the
//! sidecar preamble (`sidecar.rs`, magic `HOSTMEMC`) with two fields, the chunk size
//! u64 and the number of known blocks n u64, then n entries: the block index u64
//! followed by one u64 per chunk of that block, little-endian.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::image::Image;
use super::super::{Result, SnapshotError};
use super::sidecar::Kind;

/// Bytes per chunk checksum written by `save` and learned by a lazy restore; a sidecar
/// records its own. One base page: a first touch then reads, hashes and copies just the
/// page it faulted on (the measured choice, `docs/snapshot.md`); the cost is 8 bytes of
/// sidecar per 4 KiB of data (0.2 %).
pub const CHUNK: u64 = 4 << 10;
const CHUNKS: Kind = Kind {
    magic: *b"HOSTMEMC",
    fields: 2,
    what: "chunk checksums",
};

/// The chunk checksums known for an image's data blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSums {
    /// Bytes per chunk: a multiple of 4096.
    pub chunk: u64,
    /// Block index → one xxh3-64 per `chunk` bytes of the block (the last may be short).
    pub blocks: BTreeMap<u64, Vec<u64>>,
}

impl Default for ChunkSums {
    fn default() -> Self {
        ChunkSums {
            chunk: CHUNK,
            blocks: BTreeMap::new(),
        }
    }
}

/// The checksums of `bytes` in `chunk`-byte pieces.
pub(crate) fn sums_of(bytes: &[u8], chunk: u64) -> Vec<u64> {
    bytes
        .chunks(chunk as usize)
        .map(super::super::block_checksum)
        .collect()
}

/// Where the chunk checksums of `image` are kept: its path with `.chunks` appended.
pub fn chunks_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".chunks");
    PathBuf::from(p)
}

impl ChunkSums {
    /// Writes the sums for `image` to `path` (a temporary file renamed over it).
    pub fn save(&self, path: &Path, image: &Image) -> Result<()> {
        let (fields, entries) = self.encoded();
        CHUNKS.save(
            path,
            image,
            &fields,
            &entries,
            "writing the chunk checksums",
        )
    }

    /// Writes the sums for the image of header checksum `checksum` and `blocks` blocks
    /// to `path` as it is (`save` writes an image's under a temporary name).
    pub(crate) fn write(&self, path: &Path, checksum: u64, blocks: u64) -> std::io::Result<()> {
        let (fields, entries) = self.encoded();
        std::fs::write(path, CHUNKS.encode(checksum, blocks, &fields, &entries))
    }

    /// The sidecar's fields and entries.
    fn encoded(&self) -> ([u64; 2], Vec<u8>) {
        let mut entries = Vec::new();
        for (b, sums) in &self.blocks {
            entries.extend_from_slice(&b.to_le_bytes());
            sums.iter()
                .for_each(|s| entries.extend_from_slice(&s.to_le_bytes()));
        }
        ([self.chunk, self.blocks.len() as u64], entries)
    }

    /// Checks every sum against the image's bytes (each block read and checked against
    /// the block table first): `path` is the sidecar's, for the error. Returns the
    /// chunks checked; a sum that does not match bytes the block table vouches for is
    /// the sidecar's fault, reported as such (block and chunk named).
    pub fn verify(&self, path: &Path, image: &Image) -> Result<u64> {
        let h = image.header();
        let mut buf = vec![0u8; h.buffer_len()];
        let mut checked = 0;
        for (&b, sums) in &self.blocks {
            let bad = |reason: String| SnapshotError::Format {
                path: path.to_path_buf(),
                reason,
            };
            let at = h
                .block(b)
                .ok_or_else(|| bad(format!("block {b} is past the table")))?;
            let bytes = image.read_checked(&at, &mut buf)?;
            let found = sums_of(bytes, self.chunk);
            if let Some(k) = (0..found.len()).find(|&k| sums.get(k) != Some(&found[k])) {
                return Err(bad(format!(
                    "block {b}, chunk {k} ({} bytes at block offset {:#x}): the chunk \
                     checksum does not match the image's bytes",
                    self.chunk,
                    k as u64 * self.chunk
                )));
            }
            checked += found.len() as u64;
        }
        Ok(checked)
    }

    /// Reads the sums saved for `image` at `path`: refused (with the reason) when the
    /// file is not one, is damaged, or was made for another image.
    pub fn load(path: &Path, image: &Image) -> Result<ChunkSums> {
        let (fields, entries) = CHUNKS.load(path, image, "reading the chunk checksums")?;
        let bad = |reason: &str| CHUNKS.bad(path, reason);
        let h = image.header();
        let chunk = fields[0];
        if chunk == 0 || !chunk.is_multiple_of(4096) || chunk > h.block_size {
            return Err(bad(
                "the chunk size is not a multiple of 4096 up to the image's block size",
            ));
        }
        let mut sums = ChunkSums {
            chunk,
            blocks: BTreeMap::new(),
        };
        let mut at = 0usize;
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(entries.get(i..i + 8)?.try_into().ok()?))
        };
        for _ in 0..fields[1] {
            let b = word(at).ok_or_else(|| bad("the chunk checksums end early"))?;
            let len = h.block(b).ok_or_else(|| bad("a block past the table"))?.len;
            let n = len.div_ceil(chunk) as usize;
            let list: Option<Vec<u64>> = (0..n).map(|k| word(at + 8 + 8 * k)).collect();
            sums.blocks
                .insert(b, list.ok_or_else(|| bad("the chunk checksums end early"))?);
            at += 8 + 8 * n;
        }
        if at != entries.len() {
            return Err(bad("the chunk checksums' length does not match its count"));
        }
        Ok(sums)
    }
}
