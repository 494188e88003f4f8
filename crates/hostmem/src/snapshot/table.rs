//! The block table as stored: dense (format v1, one entry per block, every image before
//! diffs were sparse and every full image since) or sparse (v2, diffs: one entry per
//! block not left to the base, by index).
//!
//! Why a sparse table for diffs: a diff's blocks are small (4 KiB, the dirty bitmap's
//! page), so a dense table costs 16 bytes per 4 KiB of memory — 4 MiB per GiB — whatever
//! the guest wrote, as much as 1000 written pages. Listing only the blocks the diff holds
//! makes the table 24 bytes per block written. Full images keep the dense table: most of
//! their blocks are listed anyway, and the index would only add 8 bytes to each.
//!
//! Decoding checks every entry (never a panic on input): a known kind, and for a sparse
//! table strictly increasing indices inside the image.

use super::format::BlockKind;

/// Version of images with a dense table: full images (and diffs written before v2).
pub const VERSION_DENSE: u32 = 1;
/// Version of images with a sparse table: diffs.
pub const VERSION_SPARSE: u32 = 2;

/// Bytes of a dense entry: checksum (u64 LE), kind (u32 LE), reserved (u32, 0).
pub(crate) const DENSE_ENTRY: u64 = 16;
/// Bytes of a sparse entry: block index (u64 LE), then a dense entry's fields.
pub(crate) const SPARSE_ENTRY: u64 = 24;

/// Bytes per table entry in an image of `version` (0 for a raw file: no table).
pub(crate) fn entry_len(version: u32) -> u64 {
    match version {
        VERSION_DENSE => DENSE_ENTRY,
        VERSION_SPARSE => SPARSE_ENTRY,
        _ => 0,
    }
}

/// Entries a table of `version` stores for `blocks`: every block when dense, the blocks
/// not left to the base when sparse.
pub(crate) fn entries(version: u32, blocks: &[BlockKind]) -> u64 {
    match version {
        VERSION_SPARSE => blocks.iter().filter(|b| **b != BlockKind::Base).count() as u64,
        VERSION_DENSE => blocks.len() as u64,
        _ => 0,
    }
}

fn kind_fields(b: BlockKind) -> (u64, u32) {
    match b {
        BlockKind::Hole => (0, 0),
        BlockKind::Data { checksum } => (checksum, 1),
        BlockKind::Base => (0, 2),
        // Only raw files have unchecked blocks, and they have no table: a kind readers
        // refuse.
        BlockKind::Unchecked => (0, u32::MAX),
    }
}

fn put(t: &mut Vec<u8>, sum: u64, kind: u32) {
    t.extend_from_slice(&sum.to_le_bytes());
    t.extend_from_slice(&kind.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
}

/// The table of `blocks` as an image of `version` stores it.
pub(crate) fn encode(version: u32, blocks: &[BlockKind]) -> Vec<u8> {
    let mut t = Vec::with_capacity((entries(version, blocks) * entry_len(version)) as usize);
    for (i, &b) in (0u64..).zip(blocks) {
        let (sum, kind) = kind_fields(b);
        match version {
            VERSION_DENSE => put(&mut t, sum, kind),
            VERSION_SPARSE if b != BlockKind::Base => {
                t.extend_from_slice(&i.to_le_bytes());
                put(&mut t, sum, kind);
            }
            _ => {}
        }
    }
    t
}

/// One entry's checksum and kind (the 12 bytes after a sparse entry's index).
fn kind_of(e: &[u8]) -> std::result::Result<BlockKind, u32> {
    let sum = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
    match u32::from_le_bytes(e[8..12].try_into().unwrap_or_default()) {
        0 => Ok(BlockKind::Hole),
        1 => Ok(BlockKind::Data { checksum: sum }),
        2 => Ok(BlockKind::Base),
        k => Err(k),
    }
}

/// The kind of each of `blocks` blocks from a table of `version` (the bytes the header's
/// entries cover: the caller read exactly those).
pub(crate) fn decode(
    version: u32,
    t: &[u8],
    blocks: u64,
) -> std::result::Result<Vec<BlockKind>, String> {
    let len = entry_len(version);
    if len == 0 || !(t.len() as u64).is_multiple_of(len) {
        return Err(format!(
            "a {}-byte table is not whole entries of a version {version} table",
            t.len()
        ));
    }
    if version == VERSION_DENSE {
        if t.len() as u64 / len != blocks {
            return Err(format!(
                "the dense table has {} entries for {blocks} blocks",
                t.len() as u64 / len
            ));
        }
        return t
            .chunks_exact(len as usize)
            .enumerate()
            .map(|(i, e)| kind_of(e).map_err(|k| format!("block {i} has unknown kind {k}")))
            .collect();
    }
    let mut out = vec![BlockKind::Base; usize::try_from(blocks).map_err(|_| "too many blocks")?];
    let mut next = 0u64;
    for (n, e) in t.chunks_exact(len as usize).enumerate() {
        let i = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        if i >= blocks {
            return Err(format!(
                "sparse table entry {n} names block {i}, past the image's {blocks} blocks"
            ));
        }
        if i < next {
            return Err(format!(
                "sparse table entry {n} names block {i}: its indices are not strictly increasing"
            ));
        }
        let kind = kind_of(&e[8..]).map_err(|k| format!("block {i} has unknown kind {k}"))?;
        if kind == BlockKind::Base {
            return Err(format!(
                "sparse table entry {n} lists block {i} as the base's: only blocks not left to the base are listed"
            ));
        }
        out[i as usize] = kind;
        next = i + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<BlockKind> {
        vec![
            BlockKind::Base,
            BlockKind::Data { checksum: 7 },
            BlockKind::Base,
            BlockKind::Hole,
            BlockKind::Base,
        ]
    }

    #[test]
    fn both_tables_read_back_what_was_written() {
        let b = sample();
        let dense = encode(VERSION_DENSE, &b);
        assert_eq!(dense.len() as u64, 5 * DENSE_ENTRY);
        assert_eq!(decode(VERSION_DENSE, &dense, 5).unwrap(), b);
        let sparse = encode(VERSION_SPARSE, &b);
        assert_eq!(sparse.len() as u64, 2 * SPARSE_ENTRY);
        assert_eq!(entries(VERSION_SPARSE, &b), 2);
        // Index 1, checksum 7, kind 1, reserved 0.
        assert_eq!(sparse[..8], 1u64.to_le_bytes());
        assert_eq!(sparse[8..16], 7u64.to_le_bytes());
        assert_eq!(sparse[16..24], [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(VERSION_SPARSE, &sparse, 5).unwrap(), b);
        assert_eq!(
            decode(VERSION_SPARSE, &[], 3).unwrap(),
            vec![BlockKind::Base; 3]
        );
    }

    #[test]
    fn each_damage_to_a_sparse_table_is_refused_with_its_reason() {
        let good = encode(VERSION_SPARSE, &sample());
        let with = |at: usize, bytes: &[u8]| {
            let mut t = good.clone();
            t[at..at + bytes.len()].copy_from_slice(bytes);
            decode(VERSION_SPARSE, &t, 5).unwrap_err()
        };
        // Second entry's index (3) made 1: a duplicate; 0: going back.
        assert!(with(24, &1u64.to_le_bytes()).contains("not strictly increasing"));
        assert!(with(24, &0u64.to_le_bytes()).contains("not strictly increasing"));
        assert!(with(24, &5u64.to_le_bytes()).contains("past the image's 5 blocks"));
        assert!(with(24, &u64::MAX.to_le_bytes()).contains("past the image's"));
        assert!(with(16, &9u32.to_le_bytes()).contains("block 1 has unknown kind 9"));
        assert!(with(16, &2u32.to_le_bytes()).contains("as the base's"));
        let e = decode(VERSION_SPARSE, &good[..30], 5).unwrap_err();
        assert!(e.contains("not whole entries"), "{e}");
        let e = decode(VERSION_DENSE, &good[..32], 5).unwrap_err();
        assert!(e.contains("2 entries for 5 blocks"), "{e}");
        assert!(decode(3, &[], 0).is_err(), "an unknown version");
    }
}
