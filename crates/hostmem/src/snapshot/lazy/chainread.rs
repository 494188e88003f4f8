//! A lazy restore of a chain (a full image, then diffs on it, newest last): the units
//! stay the full image's blocks (`plan.rs`), and each unit is either the full image's
//! block as it is — served exactly as a lone image's, chunk sums included — or, where a
//! diff holds any of its bytes, assembled from its pieces ([`chain::pieces`]) and served
//! whole.
//!
//! Why whole: a fault serves a 4 KiB chunk by its chunk sum, and chunk sums are the full
//! image's (its sidecar); a unit a diff touches has bytes no sidecar describes, so each
//! source block is read and checked whole against its own image's block table, and once
//! all of them are, the unit is copied as a lone image's block is.

use super::super::chain::{self, Piece, Source};
use super::super::format::{BlockAt, BlockKind};
use super::super::image::Image;
use super::super::restore::split;
use super::super::{BlockFault, SnapshotError};
use super::engine::{Shared, Unit, READ_PIECE};

/// What unit `at` (a block of `chain[0]`, of kind `kind` there) is served from: its
/// kind and no pieces when it is `chain[0]`'s block as it is (or all holes: then a
/// hole), else the pieces it is assembled from (at least one a diff's).
pub(super) fn unit_source(
    chain: &[&Image],
    at: &BlockAt,
    kind: BlockKind,
) -> Result<(BlockKind, Vec<Piece>), SnapshotError> {
    if chain.iter().skip(1).all(|im| left_to_base(im, at)) {
        return Ok((kind, Vec::new()));
    }
    let pieces = chain::pieces(chain, at)?;
    Ok(match pieces.as_slice() {
        // The pieces cover the unit: a lone piece from the full image is its block.
        [Piece {
            from: Source::Data { image: 0, .. },
            ..
        }] => (kind, Vec::new()),
        ps if ps.iter().all(|p| p.from == Source::Hole) => (BlockKind::Hole, Vec::new()),
        _ => (kind, pieces),
    })
}

/// Whether diff `image` leaves every byte of `at` to its base: a scan of its table
/// for the unit, so the units no diff touches (most, for a diff of a few pages) are
/// not split page by page while the memory is not usable yet.
fn left_to_base(image: &Image, at: &BlockAt) -> bool {
    let h = image.header();
    let (Some(first), Some(last)) = (
        h.block_of(at.backend_offset),
        h.block_of(at.backend_offset + at.len.saturating_sub(1)),
    ) else {
        return false;
    };
    image
        .blocks()
        .get(first.index as usize..=last.index as usize)
        .is_some_and(|kinds| kinds.iter().all(|k| *k == BlockKind::Base))
}

impl Shared {
    /// `e`, a block error of the chain's image `k`, naming that image's file when the
    /// chain has more than one (a lone image's errors stay as they were).
    pub(super) fn named(&self, k: usize, e: SnapshotError) -> SnapshotError {
        match self.chain.get(k) {
            Some(image) => chain::named(self.chain.len(), image, e),
            None => e,
        }
    }

    /// The error for block `b` of the chain's image `k` (0: the full image).
    pub(super) fn block_error(&self, k: usize, b: &BlockAt, fault: BlockFault) -> SnapshotError {
        let image = self.chain.get(k).unwrap_or(&self.image);
        self.named(k, image.block_error(b, fault))
    }

    /// The checked bytes of data unit `u`, in `buf`: the full image's block read and
    /// checked, or, for a unit a diff touches, each distinct source block read and
    /// checked once (the full image's into the unit's place, a diff's into that diff's
    /// part of `buf` after it) and the unit assembled, holes as zeros. Nothing comes
    /// back unless every byte was checked; the error names the image and block.
    pub(super) fn unit_bytes<'a>(
        &self,
        u: &Unit,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], SnapshotError> {
        let len = u.at.len as usize;
        if u.pieces.is_empty() {
            buf.resize(len, 0);
            return self
                .image
                .read_checked_by(&u.at, buf, READ_PIECE)
                .map_err(|e| self.named(0, e));
        }
        // One buffer per diff, each its largest block (a diff's block may hold more
        // than the piece it gives: a 64 KiB block under a newer 4 KiB one).
        let lens: Vec<usize> = self
            .chain
            .iter()
            .skip(1)
            .map(|im| im.header().buffer_len())
            .collect();
        buf.resize(len + lens.iter().sum::<usize>(), 0);
        let (unit, rest) = buf.split_at_mut(len);
        let mut scratch = split(rest, &lens);
        let from_full = |p: &Piece| matches!(p.from, Source::Data { image: 0, .. });
        if u.pieces.iter().any(from_full) {
            self.image
                .read_checked_by(&u.at, unit, READ_PIECE)
                .map_err(|e| self.named(0, e))?;
        }
        // The block each diff's buffer holds: a source block's pieces may have a newer
        // diff's between them, and it is read once.
        let mut loaded: Vec<Option<u64>> = vec![None; scratch.len()];
        for p in &u.pieces {
            let within = (p.backend_offset - u.at.backend_offset) as usize;
            let dst = &mut unit[within..within + p.len as usize];
            let (k, block) = match p.from {
                Source::Hole => {
                    dst.fill(0);
                    continue;
                }
                Source::Data { image: 0, .. } => continue,
                Source::Data { image, block } => (image, block),
            };
            let own = &mut scratch[k - 1];
            if loaded[k - 1] != Some(block.index) {
                self.chain[k]
                    .read_checked_by(&block, own, READ_PIECE)
                    .map_err(|e| self.named(k, e))?;
                loaded[k - 1] = Some(block.index);
            }
            let from = (p.backend_offset - block.backend_offset) as usize;
            dst.copy_from_slice(&own[from..from + p.len as usize]);
        }
        Ok(unit)
    }
}
