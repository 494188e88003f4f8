//! Where the image's blocks go: the units a lazy restore serves (each block of the full
//! image where it lies in the uffd's address space, with the pieces a chain's diffs
//! make of it) and the order the background fill takes them in.

use std::sync::Mutex;

use super::super::format::BlockKind;
use super::super::image::Image;
use super::super::SnapshotError;
use super::chainread::unit_source;
use super::engine::{State, Unit};
use super::LazyRegion;

/// The units of `chain` (a full image, then the diffs on it; checked as a chain) over
/// `regions`: every block of the full image whose memory a region holds, with its host
/// address. A block partly inside a region, or not on the region's pages, is refused;
/// blocks outside every region are not served (no fault can come for them).
pub(super) fn units(chain: &[&Image], regions: &[LazyRegion]) -> Result<Vec<Unit>, SnapshotError> {
    let Some(&image) = chain.first() else {
        return Ok(Vec::new());
    };
    let h = image.header();
    let mut units = Vec::new();
    for i in 0..h.blocks {
        let Some(at) = h.block(i) else { continue };
        let (start, end) = (at.backend_offset, at.backend_offset + at.len);
        let Some(r) = regions
            .iter()
            .find(|r| start < r.backend_offset + r.len && r.backend_offset < end)
        else {
            continue;
        };
        if start < r.backend_offset || end > r.backend_offset + r.len {
            return Err(SnapshotError::Mismatch(format!(
                "block {i} (backend bytes {start:#x}..{end:#x}) is not inside one region"
            )));
        }
        let host = r.host_addr + (start - r.backend_offset);
        if r.page_size == 0
            || !host.is_multiple_of(r.page_size)
            || !at.len.is_multiple_of(r.page_size)
        {
            return Err(SnapshotError::Mismatch(format!(
                "block {i} ({} bytes at {host:#x}) is not whole {}-byte pages: \
                 a page larger than the image's block cannot be served lazily",
                at.len, r.page_size
            )));
        }
        let kind = image.blocks()[i as usize];
        if kind == BlockKind::Base {
            return Err(SnapshotError::Mismatch(
                "a diff image cannot be served alone: restore it with its base \
                 (restore_lazy_chain, restore_chain)"
                    .into(),
            ));
        }
        let (kind, pieces) = unit_source(chain, &at, kind)?;
        units.push(Unit {
            at,
            host,
            page: r.page_size,
            kind,
            pieces,
            state: Mutex::new(State::Pending),
            served: Mutex::new(Vec::new()),
        });
    }
    units.sort_by_key(|u| u.host);
    if units
        .windows(2)
        .any(|w| w[0].host + w[0].at.len > w[1].host)
    {
        return Err(SnapshotError::Mismatch(
            "two regions map blocks to overlapping addresses".into(),
        ));
    }
    Ok(units)
}

/// The background fill's order: the recorded block indices first (those the image
/// has as data, each once), then every other data unit in address order.
pub(super) fn fill_order(units: &[Unit], recorded: &[u64]) -> Vec<usize> {
    let by_block: std::collections::HashMap<u64, usize> = units
        .iter()
        .enumerate()
        .filter(|(_, u)| u.is_data())
        .map(|(i, u)| (u.at.index, i))
        .collect();
    let mut seen = vec![false; units.len()];
    let mut order = Vec::with_capacity(by_block.len());
    for b in recorded {
        if let Some(&i) = by_block.get(b) {
            if !seen[i] {
                seen[i] = true;
                order.push(i);
            }
        }
    }
    for (i, u) in units.iter().enumerate() {
        if u.is_data() && !seen[i] {
            order.push(i);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::BlockAt;

    fn unit(index: u64, kind: BlockKind) -> Unit {
        let at = BlockAt {
            index,
            region: 0,
            backend_offset: index << 21,
            file_offset: index << 21,
            len: 2 << 20,
        };
        Unit {
            at,
            host: at.backend_offset,
            page: 4096,
            kind,
            pieces: Vec::new(),
            state: Mutex::new(State::Pending),
            served: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn fill_order_takes_recorded_data_blocks_first_once_then_address_order() {
        let data = BlockKind::Data { checksum: 1 };
        let units: Vec<Unit> = (0..6)
            .map(|i| unit(i, if i == 2 { BlockKind::Hole } else { data }))
            .collect();
        // 2 is a hole (never filled), 9 is past the table, 4 comes twice.
        let order = fill_order(&units, &[4, 2, 9, 1, 4]);
        assert_eq!(order, vec![4, 1, 0, 3, 5]);
    }
}
