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

use std::path::Path;

use super::format::{BlockAt, BlockKind, Header, RegionEntry};
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

/// One image of a chain as [`pieces`] reads it: its layout, its block table and its
/// file's name (for errors). Tests build these from headers without files.
#[derive(Clone, Copy)]
struct Layer<'a> {
    header: &'a Header,
    blocks: &'a [BlockKind],
    path: &'a Path,
}

impl<'a> Layer<'a> {
    fn of(image: &'a Image) -> Layer<'a> {
        Layer {
            header: image.header(),
            blocks: image.blocks(),
            path: image.path(),
        }
    }
}

/// The pieces of `unit` (a block of `chain[0]`, the oldest image), in memory order:
/// each newest-image block in it is resolved to the newest image that does not leave
/// it to its base, and neighbours with the same source block are joined.
///
/// Worked out by runs, not block by block: a diff of a few pages on a 2 MiB base
/// leaves long runs of its 4 KiB blocks to the base, and each run is resolved in the
/// base once, so the cost grows with the blocks the diffs hold, not with the unit's
/// size over the newest block size (every unit of a lazy restore pays it before the
/// memory is usable).
pub(crate) fn pieces(chain: &[&Image], unit: &BlockAt) -> Result<Vec<Piece>> {
    let layers: Vec<Layer> = chain.iter().map(|im| Layer::of(im)).collect();
    pieces_of(&layers, unit.backend_offset, unit.len)
}

fn pieces_of(layers: &[Layer], start: u64, len: u64) -> Result<Vec<Piece>> {
    let mut out = Vec::new();
    if let Some(newest) = layers.len().checked_sub(1) {
        resolve(layers, newest, start, start.saturating_add(len), &mut out)?;
    }
    Ok(out)
}

/// Appends the pieces of backend range `start..end` as image `k` and the images
/// before it hold it: image `k`'s own blocks as they are, each run of blocks it leaves
/// to its base resolved in image `k - 1`. Errors come in memory order, each at the
/// first newest-image block it concerns, as a block-by-block walk would meet them.
fn resolve(layers: &[Layer], k: usize, start: u64, end: u64, out: &mut Vec<Piece>) -> Result<()> {
    let layer = &layers[k];
    let h = layer.header;
    let mut at = start;
    while at < end {
        let r = region_of(layer, at)?;
        let region_end = r.backend_offset + r.len;
        let stop = end.min(region_end);
        let mut index = r.first_block + (at - r.backend_offset) / h.block_size;
        // One past the last block of the range in the table: a run's scan stops there.
        let last = r.first_block + (stop - 1 - r.backend_offset) / h.block_size;
        let table_end = layer.blocks.len().min(last as usize + 1);
        let mut run: Option<u64> = None; // start of the current run left to the base
        while at < stop {
            let kind = layer.blocks.get(index as usize);
            if kind == Some(&BlockKind::Base) {
                // Skip the whole run in the table at once.
                let rest = &layer.blocks[index as usize..table_end];
                let n = rest.iter().position(|b| *b != BlockKind::Base);
                let n = n.unwrap_or(rest.len()) as u64;
                run.get_or_insert(at);
                let run_end = r.backend_offset + (index + n - r.first_block) * h.block_size;
                at = run_end.min(stop);
                index += n;
                continue;
            }
            if let Some(s) = run.take() {
                resolve_base(layers, k, s, at, out)?;
            }
            let block = h.block(index).ok_or_else(|| outside(layer, at))?;
            let piece_end = (block.backend_offset + block.len).min(stop);
            let from = match kind {
                Some(BlockKind::Hole) => Source::Hole,
                Some(_) => Source::Data { image: k, block },
                None => return Err(held_by_none(at)),
            };
            push(out, at, piece_end - at, from);
            at = piece_end;
            index += 1;
        }
        if let Some(s) = run.take() {
            resolve_base(layers, k, s, at, out)?;
        }
    }
    Ok(())
}

/// Resolves `start..end`, left to its base by image `k`, in image `k - 1`; the oldest
/// image has no base to leave it to.
fn resolve_base(
    layers: &[Layer],
    k: usize,
    start: u64,
    end: u64,
    out: &mut Vec<Piece>,
) -> Result<()> {
    match k.checked_sub(1) {
        Some(older) => resolve(layers, older, start, end, out),
        None => Err(held_by_none(start)),
    }
}

/// The region of `layer` holding backend offset `at` (the one [`Header::block_of`]
/// finds).
fn region_of<'a>(layer: &Layer<'a>, at: u64) -> Result<&'a RegionEntry> {
    layer
        .header
        .regions
        .iter()
        .find(|r| at >= r.backend_offset && at - r.backend_offset < r.len)
        .ok_or_else(|| outside(layer, at))
}

/// Appends a piece, joined to the last one when it continues it from the same source.
fn push(out: &mut Vec<Piece>, at: u64, len: u64, from: Source) {
    match out.last_mut() {
        Some(p) if p.from == from && p.backend_offset + p.len == at => p.len += len,
        _ => out.push(Piece {
            backend_offset: at,
            len,
            from,
        }),
    }
}

fn outside(layer: &Layer, at: u64) -> SnapshotError {
    SnapshotError::Mismatch(format!(
        "{}: backend offset {at:#x} is outside its regions",
        layer.path.display()
    ))
}

fn held_by_none(at: u64) -> SnapshotError {
    SnapshotError::Mismatch(format!(
        "no image of the chain holds backend offset {at:#x}: a chain starts with a full image"
    ))
}

/// The block-by-block walk [`pieces`] replaced, kept as the tests' oracle: every
/// newest-image block of the unit resolved on its own.
#[cfg(test)]
fn pieces_by_block(layers: &[Layer], start: u64, len: u64) -> Result<Vec<Piece>> {
    let Some(newest) = layers.last() else {
        return Ok(Vec::new());
    };
    let step = newest.header.block_size;
    let end = start + len;
    let mut out: Vec<Piece> = Vec::new();
    let mut at = start;
    while at < end {
        let len = step.min(end - at);
        let from = source(layers, at)?;
        push(&mut out, at, len, from);
        at += len;
    }
    Ok(out)
}

/// The source of the newest image's block at backend offset `at`.
#[cfg(test)]
fn source(layers: &[Layer], at: u64) -> Result<Source> {
    for (k, layer) in layers.iter().enumerate().rev() {
        let block = layer
            .header
            .block_of(at)
            .ok_or_else(|| outside(layer, at))?;
        match layer.blocks.get(block.index as usize) {
            Some(BlockKind::Base) => continue,
            Some(BlockKind::Hole) => return Ok(Source::Hole),
            Some(BlockKind::Data { .. } | BlockKind::Unchecked) => {
                return Ok(Source::Data { image: k, block })
            }
            None => break,
        }
    }
    Err(held_by_none(at))
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

    /// splitmix64: a seeded, repeatable stream for the random chains.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A random table: runs of one kind, so a diff has long runs left to its base as a
    /// diff of a few pages does, and short ones; `base` says whether Base may appear.
    fn table(rng: &mut Rng, blocks: u64, base: bool) -> Vec<BlockKind> {
        let mut t = Vec::new();
        while (t.len() as u64) < blocks {
            let kind = match rng.below(if base { 8 } else { 3 }) {
                0 => BlockKind::Hole,
                1 => BlockKind::Unchecked,
                2 => BlockKind::Data {
                    checksum: rng.next(),
                },
                _ => BlockKind::Base,
            };
            let most = if rng.below(2) == 0 { 3 } else { 200 };
            let run = 1 + rng.below(most);
            for _ in 0..run.min(blocks - t.len() as u64) {
                t.push(kind);
            }
        }
        t
    }

    /// A random chain of 2 to 4 images on one or two regions, block sizes shrinking by
    /// powers of two (2 MiB → 64 KiB → 4 KiB and the like), regions not whole blocks.
    fn chain(rng: &mut Rng) -> (Vec<Header>, Vec<Vec<BlockKind>>) {
        let page = 4096;
        let oldest = [2 << 20, 1 << 20, 256 << 10][rng.below(3) as usize];
        let mut ranges = Vec::new();
        let mut at = rng.below(64) * page;
        for _ in 0..1 + rng.below(2) {
            let len = rng.below(3) * oldest + (1 + rng.below(oldest / page)) * page;
            ranges.push((at, len));
            at += len + (1 + rng.below(600)) * page; // a gap: regions are not adjacent
        }
        let mut sizes = vec![oldest];
        for _ in 1..2 + rng.below(3) {
            let last = *sizes.last().unwrap_or(&oldest);
            sizes.push((last >> rng.below(6)).max(page));
        }
        let mut headers = Vec::new();
        let mut tables = Vec::new();
        for (k, &bs) in sizes.iter().enumerate() {
            let h = Header::new(bs, page, at, None, None, Default::default())
                .plan(&ranges)
                .expect("a small layout");
            // Now and then an oldest image with a Base block, or a table cut short:
            // both must be refused the same way.
            let base = k > 0 || rng.below(10) == 0;
            let mut t = table(rng, h.blocks, base);
            if rng.below(12) == 0 {
                t.truncate(rng.below(h.blocks + 1) as usize);
            }
            headers.push(h);
            tables.push(t);
        }
        (headers, tables)
    }

    #[test]
    fn pieces_by_runs_are_the_pieces_block_by_block() {
        let mut rng = Rng(0x6869_6e74_6d65_6d21);
        let paths: Vec<std::path::PathBuf> = (0..4).map(|k| format!("image{k}").into()).collect();
        let (mut units, mut errors) = (0, 0);
        for _ in 0..400 {
            let (headers, tables) = chain(&mut rng);
            let layers: Vec<Layer> = (0..headers.len())
                .map(|k| Layer {
                    header: &headers[k],
                    blocks: &tables[k],
                    path: &paths[k],
                })
                .collect();
            let newest = headers.last().map_or(4096, |h| h.block_size);
            // Every unit, then ranges on the newest image's blocks inside a region.
            let mut ranges: Vec<(u64, u64)> = (0..headers[0].blocks)
                .filter_map(|i| headers[0].block(i))
                .map(|b| (b.backend_offset, b.len))
                .collect();
            for r in &headers[0].regions {
                let blocks = r.len.div_ceil(newest);
                let first = rng.below(blocks);
                let end = (r.backend_offset + (first + 1 + rng.below(blocks - first)) * newest)
                    .min(r.backend_offset + r.len);
                ranges.push((
                    r.backend_offset + first * newest,
                    end - r.backend_offset - first * newest,
                ));
            }
            for (start, len) in ranges {
                let by_runs = pieces_of(&layers, start, len).map_err(|e| e.to_string());
                let by_block = pieces_by_block(&layers, start, len).map_err(|e| e.to_string());
                assert_eq!(
                    by_runs, by_block,
                    "range {start:#x}+{len:#x} of {headers:?} {tables:?}"
                );
                units += 1;
                errors += usize::from(by_block.is_err());
            }
        }
        // The chains reach the refusals, and mostly resolve.
        assert!(
            errors > 0 && errors < units / 4,
            "{errors} errors in {units}"
        );
    }
}
