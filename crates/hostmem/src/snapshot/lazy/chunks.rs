//! Chunk checksums: an xxh3-64 for every chunk (`CHUNK` bytes when `save` writes them)
//! of each data block, kept in a sidecar file beside the image (`FILE.chunks`) so a lazy
//! restore serves a first touch by reading and checking one chunk instead of the whole
//! 2 MiB block. `save` writes them with the image (hashing bytes it has read anyway);
//! a lazy restore of an image without them learns them from the blocks it verified
//! whole, for the next restore.
//!
//! A sidecar and not the image itself: the image format stays version 1 for every
//! reader and tool, and a sidecar that is lost, damaged or another image's is refused
//! and the restore falls back to whole blocks. Format (`docs/snapshot.md`),
//! little-endian: magic `HOSTMEMC`, version u32 = 1, reserved u32, the image's header
//! checksum u64, its block count u64, the chunk size u64, the number of known blocks n
//! u64, xxh3-64 of the entries u64, then n entries: the block index u64 followed by one
//! u64 per chunk of that block.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::image::Image;
use super::super::{Result, SnapshotError};

/// Bytes per chunk checksum written by `save` and learned by a lazy restore; a sidecar
/// records its own. One base page: a first touch then reads, hashes and copies just the
/// page it faulted on (the measured choice, `docs/snapshot.md`); the cost is 8 bytes of
/// sidecar per 4 KiB of data (0.2 %).
pub const CHUNK: u64 = 4 << 10;
const MAGIC: [u8; 8] = *b"HOSTMEMC";
const VERSION: u32 = 1;
const HEAD: usize = 56;

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
        let io = |source| SnapshotError::Io {
            what: "writing the chunk checksums",
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        self.write(Path::new(&tmp), image.checksum(), image.header().blocks)
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Writes the sums for the image of header checksum `checksum` and `blocks` blocks
    /// to `path` as it is (`save` writes an image's under a temporary name).
    pub(crate) fn write(&self, path: &Path, checksum: u64, blocks: u64) -> std::io::Result<()> {
        let mut entries = Vec::new();
        for (b, sums) in &self.blocks {
            entries.extend_from_slice(&b.to_le_bytes());
            sums.iter()
                .for_each(|s| entries.extend_from_slice(&s.to_le_bytes()));
        }
        let mut out = Vec::with_capacity(HEAD + entries.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            checksum,
            blocks,
            self.chunk,
            self.blocks.len() as u64,
            xxhash_rust::xxh3::xxh3_64(&entries),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&entries);
        std::fs::write(path, &out)
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
        let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
            what: "reading the chunk checksums",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: &str| SnapshotError::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        if bytes.len() < HEAD || bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
            return Err(bad("not a version 1 chunk checksum file"));
        }
        let h = image.header();
        if u64_at(16) != Some(image.checksum()) || u64_at(24) != Some(h.blocks) {
            return Err(bad("the chunk checksums were made for another image"));
        }
        let chunk = u64_at(32).unwrap_or(0);
        if chunk == 0 || !chunk.is_multiple_of(4096) || chunk > h.block_size {
            return Err(bad(
                "the chunk size is not a multiple of 4096 up to the image's block size",
            ));
        }
        let entries = &bytes[HEAD..];
        if u64_at(48) != Some(xxhash_rust::xxh3::xxh3_64(entries)) {
            return Err(bad("the chunk checksums' checksum does not match"));
        }
        let mut sums = ChunkSums {
            chunk,
            blocks: BTreeMap::new(),
        };
        let mut at = 0usize;
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(entries.get(i..i + 8)?.try_into().ok()?))
        };
        for _ in 0..u64_at(40).unwrap_or(0) {
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
