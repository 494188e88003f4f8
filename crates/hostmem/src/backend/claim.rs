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

#[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
impl Claimed {
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        offset < self.offset + self.len && self.offset < offset + len
    }
}

#[cfg(feature = "vm-memory")]
pub(crate) use guard::Claim;

#[cfg(feature = "vm-memory")]
mod guard {
    use super::Claimed;
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
        ) -> Result<Claim, Option<Claimed>> {
            let end = offset.checked_add(len).ok_or(None)?;
            if len == 0 || end > hold.len() as u64 {
                return Err(None);
            }
            let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = claims.iter().find(|c| c.overlaps(offset, len)) {
                return Err(Some(*c));
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
