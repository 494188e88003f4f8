//! An image file opened and checked ([`Image`]), or a raw memory file read with its
//! layout given.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::format::{header_checksum, BlockKind, Header, RegionEntry};
use super::format::{MAGIC, MAX_HEADER, PREAMBLE};
use super::table::{self, VERSION_DENSE, VERSION_SPARSE};
use super::{Result, SnapshotError};

/// A layout region of a raw memory file (Firecracker's): regions back to back in the
/// file in the order given, each at `backend_offset` in the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRegion {
    /// Where the region goes in the backend.
    pub backend_offset: u64,
    /// Its length (whole pages).
    pub len: u64,
}

/// An image file opened and checked: its header and block table.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: File,
    header: Header,
    table: Vec<BlockKind>,
    /// The preamble's checksum of header and table: what a diff names its base by.
    checksum: u64,
}

impl Image {
    /// Opens an image of format v1 (a dense table) or v2 (a sparse one, a diff's): magic,
    /// version, header and table checksum, layout checks, every table entry. Block
    /// checksums are checked by [`Image::verify`] and as a restore reads them.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| SnapshotError::Io {
            what: "opening image",
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| SnapshotError::Format {
            path: path.clone(),
            reason,
        };
        let read = |off: u64, len: u64, what: &str| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, off)
                .map_err(|e| bad(format!("{what} cannot be read ({e})")))?;
            Ok(buf)
        };
        let pre = read(0, PREAMBLE, "the preamble")?;
        if pre[..8] != MAGIC {
            return Err(bad("not a hostmem image (no HOSTMEMI magic)".into()));
        }
        let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if version != VERSION_DENSE && version != VERSION_SPARSE {
            return Err(bad(format!(
                "image format version {version}; this hostmem reads versions {VERSION_DENSE} and {VERSION_SPARSE}"
            )));
        }
        let json_len = u64::from(u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]));
        if json_len > MAX_HEADER {
            return Err(bad(format!("a {json_len}-byte header is too large")));
        }
        let json = read(PREAMBLE, json_len, "the header")?;
        let v: Value = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("the header is not JSON ({e})")))?;
        let header = Header::from_json(&v).map_err(bad)?;
        if header.version != version {
            return Err(bad(format!(
                "the preamble says format version {version}, the header {}",
                header.version
            )));
        }
        if header.table_offset < PREAMBLE + json_len {
            return Err(bad("the block table overlaps the header".into()));
        }
        // The header's checks bound the table: at most MAX_BLOCKS entries.
        let table = read(header.table_offset, header.table_len(), "the block table")?;
        let stored = u64::from_le_bytes(pre[16..24].try_into().unwrap_or_default());
        let found = header_checksum(&json, &table);
        if stored != found {
            return Err(bad(format!(
                "header checksum mismatch (stored {stored:#018x}, header and table hash to {found:#018x})"
            )));
        }
        let table = table::decode(version, &table, header.blocks).map_err(bad)?;
        if header.base.is_none() && table.contains(&BlockKind::Base) {
            return Err(bad(
                "blocks refer to a base, but the header names none".into()
            ));
        }
        Ok(Image {
            path,
            file,
            header,
            table,
            checksum: stored,
        })
    }

    /// Opens a raw memory file (Firecracker's snapshot memory file) with its layout
    /// given: `regions` back to back in the file, of a backend of `backend_len` bytes.
    /// Blocks the file system reports as holes are holes; every other block is
    /// [`BlockKind::Unchecked`]: a raw file carries no checksums.
    pub fn open_raw(
        path: impl AsRef<Path>,
        regions: &[RawRegion],
        backend_len: u64,
        page_size: u64,
    ) -> Result<Image> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| SnapshotError::Io {
            what: "opening raw memory file",
            path: path.clone(),
            source,
        })?;
        let bs = super::DEFAULT_BLOCK_SIZE;
        let mut header = Header {
            version: 0,
            block_size: bs,
            page_size,
            backend_len,
            kind: None,
            id: None,
            properties: Map::new(),
            regions: Vec::new(),
            base: None,
            table_offset: 0,
            blocks: 0,
            entries: 0,
        };
        let mut at = 0u64;
        for r in regions {
            header.regions.push(RegionEntry {
                backend_offset: r.backend_offset,
                len: r.len,
                file_offset: at,
                first_block: header.blocks,
            });
            at = at.saturating_add(r.len);
            header.blocks = header.blocks.saturating_add(r.len.div_ceil(bs));
        }
        let bad = |reason: String| SnapshotError::Format {
            path: path.clone(),
            reason,
        };
        header
            .check()
            .map_err(|e| bad(format!("raw layout: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat ({e})")))?
            .len();
        if size < at {
            return Err(bad(format!("the file has {size} bytes, the layout {at}")));
        }
        let mut table = Vec::with_capacity(header.blocks as usize);
        for i in 0..header.blocks {
            let b = header.block(i).ok_or_else(|| bad("layout".into()))?;
            let data = crate::sys::seek::may_hold_data(&file, b.file_offset, b.len)
                .map_err(|e| bad(format!("SEEK_DATA failed ({e})")))?;
            table.push(if data {
                BlockKind::Unchecked
            } else {
                BlockKind::Hole
            });
        }
        Ok(Image {
            path,
            file,
            header,
            table,
            checksum: 0,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The block table, one entry per block.
    pub fn blocks(&self) -> &[BlockKind] {
        &self.table
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header checksum (xxh3-64 of the JSON header and the block table), which
    /// identifies the image as a diff's base; 0 for a raw file.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Bytes of the memory held as data in this file (not holes, not a base's blocks).
    pub fn data_bytes(&self) -> u64 {
        (0..self.header.blocks)
            .filter(|&i| {
                matches!(
                    self.table[i as usize],
                    BlockKind::Data { .. } | BlockKind::Unchecked
                )
            })
            .filter_map(|i| self.header.block(i))
            .map(|b| b.len)
            .sum()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}
