//! The preamble the lazy restore's sidecar files share (the touch order `FILE.order`,
//! the chunk checksums `FILE.chunks`), read and written in one place so the two cannot
//! drift apart. Little-endian (`docs/snapshot.md`): the file's magic (8 bytes), version
//! u32 = 1, reserved u32, the image's header checksum u64, its block count u64, the
//! kind's own fields (u64 each), xxh3-64 of the entries u64, then the entries.
//!
//! The image's checksum and block count tie a sidecar to its image: the image is
//! written once, the sidecars are rewritten beside it, and one left from another image
//! must be refused, not used.

use std::path::Path;

use super::super::image::Image;
use super::super::{Result, SnapshotError};

const VERSION: u32 = 1;
/// Bytes before the kind's own fields.
const FIXED: usize = 32;

/// One kind of sidecar: its magic, its fields' count, and what it is called in errors.
pub(super) struct Kind {
    pub magic: [u8; 8],
    pub fields: usize,
    /// "touch order", "chunk checksums".
    pub what: &'static str,
}

impl Kind {
    /// Bytes before the entries.
    pub(super) const fn head(&self) -> usize {
        FIXED + 8 * self.fields + 8
    }

    /// Writes a sidecar of this kind for `image` to `path`, through a temporary file
    /// renamed over it (a reader never sees half a file); `what` names the step in the
    /// error.
    pub(super) fn save(
        &self,
        path: &Path,
        image: &Image,
        fields: &[u64],
        entries: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let io = |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let bytes = self.encode(image.checksum(), image.header().blocks, fields, entries);
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The file's bytes for the image of header checksum `checksum` and `blocks`
    /// blocks (`fields` must be `self.fields` long).
    pub(super) fn encode(
        &self,
        checksum: u64,
        blocks: u64,
        fields: &[u64],
        entries: &[u8],
    ) -> Vec<u8> {
        debug_assert_eq!(fields.len(), self.fields);
        let mut out = Vec::with_capacity(self.head() + entries.len());
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let words = [checksum, blocks]
            .into_iter()
            .chain(fields.iter().copied())
            .chain([crate::snapshot::block_checksum(entries)]);
        words.for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
        out.extend_from_slice(entries);
        out
    }

    /// Reads the sidecar at `path` made for `image`: its fields and its entries, once
    /// the magic, version, image and entries' checksum are right; refused with the
    /// reason otherwise. `what` names the step in an I/O error.
    pub(super) fn load(
        &self,
        path: &Path,
        image: &Image,
        what: &'static str,
    ) -> Result<(Vec<u64>, Vec<u8>)> {
        let mut bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        let fields = self
            .check(&bytes, image.checksum(), image.header().blocks)
            .map_err(|reason| self.bad(path, &reason))?;
        Ok((fields, bytes.split_off(self.head())))
    }

    /// The fields of `bytes`, or why they are not a sidecar of this kind for the image
    /// of header checksum `checksum` and `blocks` blocks.
    fn check(
        &self,
        bytes: &[u8],
        checksum: u64,
        blocks: u64,
    ) -> std::result::Result<Vec<u64>, String> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let what = self.what;
        if bytes.len() < self.head() || bytes[..8] != self.magic {
            return Err(format!(
                "not a {what} file (no {} magic, or shorter than its preamble)",
                String::from_utf8_lossy(&self.magic)
            ));
        }
        if bytes[8..12] != VERSION.to_le_bytes() {
            return Err(format!("{what} version other than {VERSION}"));
        }
        if word(16) != Some(checksum) || word(24) != Some(blocks) {
            return Err(format!("{what} made for another image"));
        }
        let fields: Vec<u64> = (0..self.fields)
            .map(|i| word(FIXED + 8 * i).unwrap_or(0))
            .collect();
        let entries = &bytes[self.head()..];
        if word(self.head() - 8) != Some(crate::snapshot::block_checksum(entries)) {
            return Err(format!(
                "{what}: the checksum of the entries does not match"
            ));
        }
        Ok(fields)
    }

    /// A refusal of the sidecar at `path`.
    pub(super) fn bad(&self, path: &Path, reason: &str) -> SnapshotError {
        SnapshotError::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Kind = Kind {
        magic: *b"HOSTMEMT",
        fields: 2,
        what: "test entries",
    };

    #[test]
    fn a_written_preamble_reads_back_and_each_damage_is_refused() {
        let entries = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let bytes = K.encode(0xabc, 7, &[3, 4], &entries);
        assert_eq!(bytes.len(), K.head() + entries.len());
        assert_eq!(K.check(&bytes, 0xabc, 7), Ok(vec![3, 4]));
        let refused = |b: &[u8], c, n, why: &str| {
            let e = K.check(b, c, n).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(&bytes, 0xabd, 7, "another image");
        refused(&bytes, 0xabc, 8, "another image");
        refused(&bytes[..K.head() - 1], 0xabc, 7, "not a test entries file");
        for (at, why) in [
            (0, "not a test entries file"),
            (8, "version"),
            (K.head() - 8, "checksum"),
            (K.head(), "checksum"),
        ] {
            let mut b = bytes.clone();
            b[at] ^= 1;
            refused(&b, 0xabc, 7, why);
        }
    }
}
