//! Which ranges of a backend's memory are guest regions now.
//!
//! A range of host memory may be one guest region, never two: two guest addresses over
//! the same pages would let the guest write through one while dirty tracking (a bitmap
//! per region) sees only the other, and a migration would then miss the pages. So a
//! region claims its range of the backend for as long as it lives, and a second claim
//! that overlaps it is refused.

/// A claimed range: offset and length in the backend's memory, and the guest address
/// it is mapped at (to name it when a later claim collides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
pub(crate) struct Claimed {
    pub offset: u64,
    pub len: u64,
    pub guest: u64,
}

/// The `guest` of a range that is not a guest region but unplugged and PROT_NONE
/// (`plug.rs`): no region may be made over it, since vm-memory's copies would fault.
pub(crate) const PROTECTED: u64 = u64::MAX;

/// The `guest` of a block that is plugged (`plug.rs`): not a claim (regions may cover
/// it), but what makes memory without a reservation safe to hand to vm-memory. Kept
/// here so the check and the unplug are made under the same lock.
pub(crate) const PLUGGED: u64 = u64::MAX - 1;

/// Marks `[off, end)` as `kind` ([`PLUGGED`] or [`PROTECTED`]) or clears that mark:
/// marks of a kind are kept as few ranges (a new mark absorbs the ones it touches, a
/// cleared part splits the one it cuts), so the list grows with the runs of blocks,
/// not with their number, and plugging a large device block by block stays linear.
pub(crate) fn set_marks(claims: &mut Vec<Claimed>, kind: u64, off: u64, end: u64, on: bool) {
    let (mut start, mut stop) = (off, end);
    let mut kept = Vec::with_capacity(claims.len() + 2);
    for c in claims.drain(..) {
        let c_end = c.offset + c.len;
        if c.guest != kind
            || c_end < off
            || c.offset > end
            || (!on && (c_end == off || c.offset == end))
        {
            kept.push(c);
        } else if on {
            // Touching or overlapping: one range.
            start = start.min(c.offset);
            stop = stop.max(c_end);
        } else {
            if c.offset < off {
                kept.push(Claimed {
                    len: off - c.offset,
                    ..c
                });
            }
            if c_end > end {
                kept.push(Claimed {
                    offset: end,
                    len: c_end - end,
                    ..c
                });
            }
        }
    }
    if on {
        kept.push(Claimed {
            offset: start,
            len: stop - start,
            guest: kind,
        });
    }
    *claims = kept;
}

/// The ranges marked `kind` ([`PLUGGED`] or [`PROTECTED`]), as (start, end), sorted.
pub(crate) fn marked(claims: &[Claimed], kind: u64) -> Vec<(u64, u64)> {
    let mut m: Vec<(u64, u64)> = claims
        .iter()
        .filter(|c| c.guest == kind)
        .map(|c| (c.offset, c.offset + c.len))
        .collect();
    m.sort_unstable();
    m
}

/// Whether marks of `kind` cover `[start, end)` without a gap.
pub(crate) fn covers(claims: &[Claimed], kind: u64, start: u64, end: u64) -> bool {
    let mut at = start;
    for (a, b) in marked(claims, kind) {
        if a > at {
            break;
        }
        at = at.max(b);
        if at >= end {
            return true;
        }
    }
    at >= end
}

/// Whether any byte of `[start, end)` is marked `kind`.
pub(crate) fn touches(claims: &[Claimed], kind: u64, start: u64, end: u64) -> bool {
    claims
        .iter()
        .any(|c| c.guest == kind && c.overlaps(start, end - start))
}

/// The first live guest region (not a mark) over any byte of `[start, end)`.
pub(crate) fn region_over(claims: &[Claimed], start: u64, end: u64) -> Option<Claimed> {
    claims
        .iter()
        .find(|c| c.guest != PROTECTED && c.guest != PLUGGED && c.overlaps(start, end - start))
        .copied()
}

/// Why a range could not be claimed.
#[derive(Debug)]
#[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
pub(crate) enum Refused {
    /// Empty, or beyond the mapping.
    OutOfRange,
    /// A live region, or an unplugged protected block, overlaps it.
    Overlap(Claimed),
    /// A first touch could find no backing (huge pages without a reservation) and the
    /// range is neither preallocated whole nor plugged block by block.
    Unbacked,
}

impl Claimed {
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        offset < self.offset + self.len && self.offset < offset + len
    }
}

#[cfg(feature = "vm-memory")]
pub(crate) use guard::Claim;

#[cfg(feature = "vm-memory")]
mod guard {
    use std::sync::atomic::Ordering;

    use super::{covers, Claimed, Refused, PLUGGED};
    use crate::backend::InUse;

    /// A live claim: holds the backend's memory (so it stays mapped and the backend is
    /// in use) and gives its range back when dropped.
    #[derive(Debug)]
    pub(crate) struct Claim {
        hold: InUse,
        range: Claimed,
    }

    impl Claim {
        /// Claims `[offset, offset + len)` of the memory `hold` refers to. The range
        /// is inside the mapping (checked here: `sys::vmm` relies on it) and overlaps
        /// no live claim; otherwise the claim in the way, or `None` for a range that
        /// is empty or leaves the mapping.
        pub(crate) fn new(
            hold: InUse,
            offset: u64,
            len: u64,
            guest: u64,
        ) -> Result<Claim, Refused> {
            let end = offset.checked_add(len).ok_or(Refused::OutOfRange)?;
            if len == 0 || end > hold.len() as u64 {
                return Err(Refused::OutOfRange);
            }
            let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = claims
                .iter()
                .find(|c| c.guest != PLUGGED && c.overlaps(offset, len))
            {
                return Err(Refused::Overlap(*c));
            }
            // Read under the claims' lock, which unplug holds while it gives memory back.
            let backed = hold.0.faults_backed || hold.0.populated.load(Ordering::Acquire);
            if !backed && !covers(&claims, PLUGGED, offset, end) {
                return Err(Refused::Unbacked);
            }
            let range = Claimed { offset, len, guest };
            claims.push(range);
            drop(claims);
            Ok(Claim { hold, range })
        }

        /// The hold on the backend's memory.
        pub(crate) fn hold(&self) -> &InUse {
            &self.hold
        }

        /// Offset of the range in the backend's memory; with [`Claim::len`], inside
        /// the mapping.
        pub(crate) fn offset(&self) -> usize {
            self.range.offset as usize
        }

        /// Length of the range (not zero).
        pub(crate) fn len(&self) -> usize {
            self.range.len as usize
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            let mut claims = self.hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
            claims.retain(|c| *c != self.range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{marked as marks, set_marks, Claimed, PLUGGED, PROTECTED};

    /// Marks stay as few ranges: blocks marked one by one make one range, a cleared
    /// middle splits it, and a region's claim or the other kind's marks are untouched.
    #[test]
    fn marks_merge_when_set_block_by_block_and_split_when_cleared() {
        let region = Claimed {
            offset: 0,
            len: 8,
            guest: 0x1000,
        };
        let mut claims = vec![region];
        set_marks(&mut claims, PROTECTED, 40, 50, true);
        for b in 0..10 {
            set_marks(&mut claims, PLUGGED, b * 2, b * 2 + 2, true);
        }
        assert_eq!(marks(&claims, PLUGGED), [(0, 20)]);
        set_marks(&mut claims, PLUGGED, 6, 10, false);
        assert_eq!(marks(&claims, PLUGGED), [(0, 6), (10, 20)]);
        set_marks(&mut claims, PLUGGED, 0, 6, false);
        assert_eq!(marks(&claims, PLUGGED), [(10, 20)]);
        set_marks(&mut claims, PLUGGED, 20, 30, false);
        assert_eq!(marks(&claims, PLUGGED), [(10, 20)], "clearing beside it");
        set_marks(&mut claims, PLUGGED, 20, 22, true);
        assert_eq!(marks(&claims, PLUGGED), [(10, 22)]);
        assert_eq!(marks(&claims, PROTECTED), [(40, 50)]);
        assert!(claims.contains(&region));
        assert_eq!(claims.len(), 3);
    }
}
