//! Where each byte of a chain (a full image, then diffs, newest last) comes from, when
//! the diffs may have smaller blocks than the images before them.
//!
//! Block sizes never grow along a chain (a diff's block size divides its base's) and
//! every image has the same regions, so each block of the newest image lies inside one
//! block of every older image, and each block of the oldest (the largest) holds whole
//! blocks of every newer one. A restore therefore works through the oldest image's
//! blocks as units: a unit is split into pieces, each the newest image's block(s) that
//! come from one source block (or are holes), so a base block is read and checked once
//! for all the small blocks of a diff that leave their bytes to it.

use super::format::{BlockAt, BlockKind};
use super::image::Image;
use super::{BlockFault, Result, SnapshotError};

/// Where a piece's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Zeros: the newest image that holds the range has a hole there.
    Hole,
    /// Bytes of block `block` of the chain's image `image` (0 = oldest).
    Data { image: usize, block: BlockAt },
}

/// A range of the memory with one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Offset of its first byte in the backend.
    pub backend_offset: u64,
    /// Bytes (whole blocks of the newest image, less at a region's end).
    pub len: u64,
    pub from: Source,
}

/// The pieces of `unit` (a block of `chain[0]`, the oldest image), in memory order:
/// each newest-image block in it is resolved to the newest image that does not leave
/// it to its base, and neighbours with the same source block are joined.
pub(crate) fn pieces(chain: &[&Image], unit: &BlockAt) -> Result<Vec<Piece>> {
    let Some(newest) = chain.last() else {
        return Ok(Vec::new());
    };
    let step = newest.header().block_size;
    let end = unit.backend_offset + unit.len;
    let mut out: Vec<Piece> = Vec::new();
    let mut at = unit.backend_offset;
    while at < end {
        let len = step.min(end - at);
        let from = source(chain, at)?;
        match out.last_mut() {
            Some(p) if p.from == from && p.backend_offset + p.len == at => p.len += len,
            _ => out.push(Piece {
                backend_offset: at,
                len,
                from,
            }),
        }
        at += len;
    }
    Ok(out)
}

/// The source of the newest image's block at backend offset `at`.
fn source(chain: &[&Image], at: u64) -> Result<Source> {
    for (k, image) in chain.iter().enumerate().rev() {
        let h = image.header();
        let block = h.block_of(at).ok_or_else(|| {
            SnapshotError::Mismatch(format!(
                "{}: backend offset {at:#x} is outside its regions",
                image.path().display()
            ))
        })?;
        match image.blocks().get(block.index as usize) {
            Some(BlockKind::Base) => continue,
            Some(BlockKind::Hole) => return Ok(Source::Hole),
            Some(BlockKind::Data { .. } | BlockKind::Unchecked) => {
                return Ok(Source::Data { image: k, block })
            }
            None => break,
        }
    }
    Err(SnapshotError::Mismatch(format!(
        "no image of the chain holds backend offset {at:#x}: a chain starts with a full image"
    )))
}

/// The error for a fault on the memory at backend offset `at`, named by the newest
/// image's block there (the block a caller sees in the chain's newest file).
pub(crate) fn fault_at(chain: &[&Image], at: u64, fault: BlockFault) -> SnapshotError {
    let newest = chain.last().map(|im| im.header());
    let index = newest.and_then(|h| h.block_of(at)).map_or(0, |b| b.index);
    let page = newest.map_or(4096, |h| h.page_size).max(1);
    let e = SnapshotError::Block {
        image: None,
        index,
        backend_offset: at,
        page: at / page,
        fault,
    };
    match chain.last() {
        Some(newest) => named(chain.len(), newest, e),
        None => e,
    }
}

/// `e`, an error about a block of `image`, one of a chain of `len` images: named by
/// the image's file when there is more than one (which of them failed is then not
/// obvious); a lone image's errors stay as they are (its caller named the file).
pub(crate) fn named(len: usize, image: &Image, e: SnapshotError) -> SnapshotError {
    if len > 1 {
        e.in_image(image.path())
    } else {
        e
    }
}

/// Bytes of the memory's `page`-byte pages that the data pieces touch: what writing
/// them faults in (a 4 KiB piece of a diff faults a whole 2 MiB huge page).
pub(crate) fn data_pages(pieces: &[Piece], page: u64) -> u64 {
    let page = page.max(1);
    let mut total = 0;
    let mut last_end = 0; // end of the pages counted so far (pieces are in order)
    for p in pieces.iter().filter(|p| p.from != Source::Hole) {
        let start = (p.backend_offset / page * page).max(last_end);
        let end = (p.backend_offset + p.len).div_ceil(page) * page;
        if end > start {
            total += end - start;
            last_end = end;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(backend_offset: u64, len: u64, hole: bool) -> Piece {
        let block = BlockAt {
            index: 0,
            region: 0,
            backend_offset: 0,
            file_offset: 0,
            len: 2 << 20,
        };
        let from = if hole {
            Source::Hole
        } else {
            Source::Data { image: 0, block }
        };
        Piece {
            backend_offset,
            len,
            from,
        }
    }

    #[test]
    fn data_pieces_fault_the_pages_they_touch_once() {
        let k = 4096;
        let ps = [
            piece(0, k, false),
            piece(k, 3 * k, true),
            piece(4 * k, 2 * k, false),
        ];
        assert_eq!(data_pages(&ps, k), 3 * k);
        // On 2 MiB pages, three data pieces in one huge page fault it once.
        let huge = 2 << 20;
        let ps = [
            piece(0, k, false),
            piece(8 * k, k, false),
            piece(huge, k, false),
        ];
        assert_eq!(data_pages(&ps, huge), 2 * huge);
        assert_eq!(data_pages(&[piece(0, huge, true)], huge), 0);
    }
}
