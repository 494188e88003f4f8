//! Image format (`docs/snapshot.md`): a 32-byte preamble, a JSON header, a block table
//! (dense in v1, sparse in v2: `table.rs`), then each region's bytes as they are in
//! memory, aligned, holes as file holes.
//!
//! Everything read from a file is checked before it is used (never a panic on input):
//! the magic and version, the header and table checksum, and every offset and length,
//! with checked arithmetic, against each other.

use serde_json::{json, Map, Value};

use super::table::{entry_len, VERSION_DENSE, VERSION_SPARSE};
use crate::Kind;

/// The first 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"HOSTMEMI";
/// The newest format version this hostmem reads and writes: 2, a sparse block table,
/// written for diffs; full images are still written as version 1 (a dense table), which
/// every hostmem reads.
pub const VERSION: u32 = VERSION_SPARSE;
/// Bytes before the JSON header: magic, version, header length, checksum, reserved.
pub(crate) const PREAMBLE: u64 = 32;
/// Where a table may start: the first multiple of this past the JSON header.
const TABLE_ALIGN: u64 = 16;
/// Largest JSON header accepted (a damaged length must not make us allocate gigabytes).
pub(crate) const MAX_HEADER: u64 = 16 << 20;
/// Largest block accepted: a thread's buffer is one block.
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Largest block table accepted: 16 Mi blocks, 32 TiB at 2 MiB.
const MAX_BLOCKS: u64 = 16 << 20;

/// A range of the backend saved as one region of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// Offset of the region in the backend.
    pub backend_offset: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Offset of its first byte in the image file (aligned to the block size and page).
    pub file_offset: u64,
    /// Index of its first block in the block table.
    pub first_block: u64,
}

/// What the block table says about one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockKind {
    /// Never written or all zero: a hole in the file, zeros in memory.
    Hole,
    /// Bytes in the file, with the xxh3-64 of them.
    Data {
        /// xxh3-64 of the block's bytes.
        checksum: u64,
    },
    /// Bytes in a raw file read with [`Image::open_raw`](super::Image::open_raw): no
    /// checksum to verify.
    Unchecked,
    /// Unchanged since the base image of a diff: the base's block of the same index.
    Base,
}

/// Where one block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAt {
    /// Index in the block table.
    pub index: u64,
    /// Index of its region.
    pub region: usize,
    /// Offset of its first byte in the backend.
    pub backend_offset: u64,
    /// Offset of its first byte in the file.
    pub file_offset: u64,
    /// Bytes (the block size, less at a region's end).
    pub len: u64,
}

/// The self-describing part of an image. Non-exhaustive: it grows with the format (the
/// sparse table's `entries` came with version 2); images make it, callers read it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Header {
    /// Format version: 1 (a dense table), 2 (a sparse table: a diff), 0 for a raw file.
    pub version: u32,
    /// Bytes per block table entry's block.
    pub block_size: u64,
    /// Page size of the memory that was saved.
    pub page_size: u64,
    /// Length of the backend the regions are ranges of.
    pub backend_len: u64,
    /// The backend's QOM type (`memory-backend-memfd`), when known.
    pub kind: Option<String>,
    /// The backend's id, when known.
    pub id: Option<String>,
    /// The backend's properties as they were (name → value).
    pub properties: Map<String, Value>,
    /// The regions, in file order.
    pub regions: Vec<RegionEntry>,
    /// For a diff image: the header checksum of its base image
    /// ([`Image::checksum`](super::Image::checksum)).
    pub base: Option<u64>,
    /// Offset of the block table in the file.
    pub table_offset: u64,
    /// Blocks of the regions (what [`Image::blocks`](super::Image::blocks) lists).
    pub blocks: u64,
    /// Entries stored in the file's table: `blocks` in v1, the blocks not left to the
    /// base in v2, 0 for a raw file.
    pub entries: u64,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl Header {
    /// A header for a new image of a backend, before its layout.
    pub(crate) fn new(
        block_size: u64,
        page_size: u64,
        backend_len: u64,
        kind: Option<String>,
        id: Option<String>,
        properties: Map<String, Value>,
    ) -> Header {
        Header {
            version: VERSION_DENSE,
            block_size,
            page_size,
            backend_len,
            kind,
            id,
            properties,
            regions: Vec::new(),
            base: None,
            table_offset: 0,
            blocks: 0,
            entries: 0,
        }
    }

    /// Lays out a v1 image (a dense table) of `ranges` (backend offset, length) of the
    /// backend: the table after the JSON, each region at the next multiple of the block
    /// size (and page size), so a region can later be mapped from the file as it is.
    pub(crate) fn plan(self, ranges: &[(u64, u64)]) -> Option<Header> {
        let mut h = self.with_regions(ranges)?;
        h.version = VERSION_DENSE;
        h.entries = h.blocks;
        h.lay_out()
    }

    /// Lays out a v2 image (a sparse table, a diff's) of `ranges` whose table lists the
    /// blocks `listed` says are not left to the base: known before any block is read (a
    /// diff's from the dirty bitmap), so the regions start right after the short table.
    pub(crate) fn plan_sparse(
        self,
        ranges: &[(u64, u64)],
        listed: impl Fn(&BlockAt) -> bool,
    ) -> Option<Header> {
        let mut h = self.with_regions(ranges)?;
        h.version = VERSION_SPARSE;
        h.entries = (0..h.blocks)
            .filter(|&i| h.block(i).is_some_and(|b| listed(&b)))
            .count() as u64;
        h.lay_out()
    }

    /// The regions of `ranges`, their blocks numbered, not yet placed in the file.
    fn with_regions(self, ranges: &[(u64, u64)]) -> Option<Header> {
        let mut h = self;
        for &(backend_offset, len) in ranges {
            h.regions.push(RegionEntry {
                backend_offset,
                len,
                file_offset: 0,
                first_block: h.blocks,
            });
            h.blocks = h.blocks.checked_add(len.div_ceil(h.block_size))?;
        }
        Some(h)
    }

    /// Places the table after the JSON and each region after the table.
    fn lay_out(self) -> Option<Header> {
        let mut h = self;
        let (block_size, page_size) = (h.block_size, h.page_size);
        // The JSON's length depends on the offsets' digits: lay out with a generous
        // guess, then once more with the length the first layout printed.
        let mut json_len = 0;
        for _ in 0..3 {
            h.table_offset = align_up(PREAMBLE + json_len, TABLE_ALIGN)?;
            let mut at = h.table_offset.checked_add(h.table_len_checked()?)?;
            let align = block_size.max(page_size);
            for r in &mut h.regions {
                r.file_offset = align_up(at, align)?;
                at = r.file_offset.checked_add(r.len)?;
            }
            let printed = h.to_json_bytes().len() as u64;
            if printed <= json_len {
                return Some(h);
            }
            json_len = printed + 64;
        }
        None
    }

    /// Bytes of the block table as stored: entries times the version's entry size.
    pub fn table_len(&self) -> u64 {
        self.table_len_checked().unwrap_or(u64::MAX)
    }

    fn table_len_checked(&self) -> Option<u64> {
        self.entries.checked_mul(entry_len(self.version))
    }

    /// The backend kind, if this hostmem knows its QOM type.
    pub fn kind(&self) -> Option<Kind> {
        self.kind.as_deref().and_then(Kind::from_qom_type)
    }

    /// Bytes the regions cover.
    pub fn memory_len(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Where block `index` is, or None past the table.
    pub fn block(&self, index: u64) -> Option<BlockAt> {
        let region = self.regions.iter().rposition(|r| r.first_block <= index)?;
        let r = &self.regions[region];
        let within = (index - r.first_block).checked_mul(self.block_size)?;
        if within >= r.len {
            return None;
        }
        Some(BlockAt {
            index,
            region,
            backend_offset: r.backend_offset + within,
            file_offset: r.file_offset + within,
            len: (r.len - within).min(self.block_size),
        })
    }

    /// The block holding backend offset `offset`, or None outside the regions. How a
    /// diff with smaller blocks than its base finds the base's block around one of its
    /// own (regions are equal along a chain, so a small block lies inside one large).
    pub fn block_of(&self, offset: u64) -> Option<BlockAt> {
        let r = self
            .regions
            .iter()
            .find(|r| offset >= r.backend_offset && offset - r.backend_offset < r.len)?;
        self.block(r.first_block + (offset - r.backend_offset) / self.block_size)
    }

    /// The header as JSON (what an image stores after the preamble). A v2 header also
    /// says `"table": "sparse"` and its `"entries"`; a v1 header is as it always was.
    pub fn to_json(&self) -> Value {
        let regions: Vec<Value> = self
            .regions
            .iter()
            .map(|r| {
                json!({
                    "backend_offset": r.backend_offset,
                    "len": r.len,
                    "file_offset": r.file_offset,
                    "first_block": r.first_block,
                })
            })
            .collect();
        let mut v = json!({
            "format": "hostmem-image",
            "version": self.version,
            "checksum": "xxh3-64",
            "block_size": self.block_size,
            "page_size": self.page_size,
            "backend_len": self.backend_len,
            "kind": self.kind,
            "id": self.id,
            "properties": self.properties,
            "regions": regions,
            "base": self.base,
            "table_offset": self.table_offset,
            "blocks": self.blocks,
        });
        if self.version == VERSION_SPARSE {
            if let Some(o) = v.as_object_mut() {
                o.insert("table".into(), "sparse".into());
                o.insert("entries".into(), self.entries.into());
            }
        }
        v
    }

    pub(crate) fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a Value we built cannot fail.
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }

    /// Reads and checks a header's JSON (v1 or v2).
    pub(crate) fn from_json(v: &Value) -> std::result::Result<Header, String> {
        let num = |key: &str| -> std::result::Result<u64, String> {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("the header has no number \"{key}\""))
        };
        if v.get("format").and_then(Value::as_str) != Some("hostmem-image") {
            return Err("the header is not a hostmem-image header".into());
        }
        if v.get("checksum").and_then(Value::as_str) != Some("xxh3-64") {
            return Err("the header names a checksum other than xxh3-64".into());
        }
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let mut regions = Vec::new();
        for r in v
            .get("regions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = |key: &str| {
                r.get(key)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("a region has no number \"{key}\""))
            };
            regions.push(RegionEntry {
                backend_offset: n("backend_offset")?,
                len: n("len")?,
                file_offset: n("file_offset")?,
                first_block: n("first_block")?,
            });
        }
        let version = u32::try_from(num("version")?).map_err(|_| "bad version")?;
        let table = v.get("table");
        let entries = match version {
            VERSION_DENSE if table.is_none() => num("blocks")?,
            VERSION_SPARSE if table.and_then(Value::as_str) == Some("sparse") => num("entries")?,
            VERSION_DENSE | VERSION_SPARSE => {
                return Err(format!(
                    "a version {version} header with table {}",
                    table.unwrap_or(&Value::Null)
                ))
            }
            _ => return Err(format!("a header of format version {version}")),
        };
        let h = Header {
            version,
            block_size: num("block_size")?,
            page_size: num("page_size")?,
            backend_len: num("backend_len")?,
            kind: text("kind"),
            id: text("id"),
            properties: v
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            regions,
            base: v.get("base").and_then(Value::as_u64),
            table_offset: num("table_offset")?,
            blocks: num("blocks")?,
            entries,
        };
        h.check()?;
        Ok(h)
    }

    /// Every offset and length against the others: what makes later arithmetic safe.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let (bs, ps) = (self.block_size, self.page_size);
        if !ps.is_power_of_two() || ps < 4096 {
            return Err(format!(
                "page size {ps} is not a power of two of at least 4096"
            ));
        }
        if bs == 0 || bs % 4096 != 0 || bs > MAX_BLOCK_SIZE {
            return Err(format!(
                "block size {bs} is not a multiple of 4096 up to {MAX_BLOCK_SIZE}"
            ));
        }
        if self.blocks > MAX_BLOCKS {
            return Err(format!(
                "{} blocks is more than this hostmem reads",
                self.blocks
            ));
        }
        let listed = match self.version {
            VERSION_SPARSE => self.entries <= self.blocks,
            VERSION_DENSE => self.entries == self.blocks,
            _ => self.entries == 0,
        };
        if !listed {
            return Err(format!(
                "a version {} table of {} entries for {} blocks",
                self.version, self.entries, self.blocks
            ));
        }
        let table_end = self
            .table_len_checked()
            .and_then(|t| t.checked_add(self.table_offset))
            .ok_or("the block table's end overflows")?;
        // A raw file (version 0) has no table in it: its regions start at 0.
        let table_end = if self.version == 0 { 0 } else { table_end };
        let (mut next_block, mut file_end) = (0u64, table_end);
        for (i, r) in self.regions.iter().enumerate() {
            let bad = |what: &str| format!("region {i}: {what}");
            if r.len == 0 || r.len % 4096 != 0 || r.backend_offset % 4096 != 0 {
                return Err(bad("offset or length is not whole pages"));
            }
            match r.backend_offset.checked_add(r.len) {
                Some(end) if end <= self.backend_len => {}
                _ => return Err(bad("lies past the backend's end")),
            }
            if r.first_block != next_block {
                return Err(bad("its first block does not follow the previous region's"));
            }
            if r.file_offset % 4096 != 0 || r.file_offset < file_end {
                return Err(bad(
                    "its file offset overlaps the table or the previous region",
                ));
            }
            file_end = r
                .file_offset
                .checked_add(r.len)
                .ok_or_else(|| bad("overflows"))?;
            next_block = next_block
                .checked_add(r.len.div_ceil(bs))
                .ok_or_else(|| bad("its blocks overflow"))?;
        }
        if next_block != self.blocks {
            return Err(format!(
                "the regions have {next_block} blocks, the table {}",
                self.blocks
            ));
        }
        Ok(())
    }

    /// Bytes of the largest block: what a thread's buffer needs.
    pub(crate) fn buffer_len(&self) -> usize {
        let longest = self.regions.iter().map(|r| r.len).max().unwrap_or(0);
        longest.min(self.block_size) as usize
    }

    /// Bytes of the file the image needs: the end of the last region.
    pub fn file_len(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.file_offset + r.len)
            .max()
            .unwrap_or(self.table_offset.saturating_add(self.table_len()))
    }
}

/// The 32-byte preamble for a header of `version` and its table.
pub(crate) fn preamble(version: u32, json: &[u8], table: &[u8]) -> [u8; PREAMBLE as usize] {
    let mut p = [0u8; PREAMBLE as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&version.to_le_bytes());
    p[12..16].copy_from_slice(&(json.len() as u32).to_le_bytes());
    p[16..24].copy_from_slice(&header_checksum(json, table).to_le_bytes());
    p
}

pub(crate) fn header_checksum(json: &[u8], table: &[u8]) -> u64 {
    let mut h = super::Checksum::new();
    h.update(json);
    h.update(table);
    h.digest()
}
