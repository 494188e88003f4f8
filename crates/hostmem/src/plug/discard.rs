//! Giving memory back to the kernel, the way its kind needs: for unplugged blocks
//! ([`super::Blocks::unplug`]) and for any backend's range a balloon or free page
//! reporting hands back ([`Backend::discard`]), which is what a VMM otherwise writes
//! with `unsafe` on a host address.

use std::ops::Range;
use std::sync::atomic::Ordering;

use crate::backend::claim::{region_over, set_marks, PLUGGED};
use crate::backend::{Backend, InUse};
use crate::error::{Error, Result};

/// How memory goes back to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discard {
    /// MADV_DONTNEED: private memory (its pages are this mapping's own). Private
    /// anonymous memory reads zeros afterwards; a private mapping of a file reads the
    /// file's bytes again.
    DontNeed,
    /// MADV_REMOVE: shared anonymous memory (`memory-backend-ram,share=on`), whose
    /// pages live in an shm object only the mapping names.
    Remove,
    /// fallocate(PUNCH_HOLE|KEEP_SIZE) at the memory's offset in its memfd, shm object,
    /// hugetlbfs or other file: the pages leave the file, for every mapping of it.
    PunchHole,
}

/// Gives `[off, off + len)` of the memory `hold` refers to back to the kernel; on
/// failure, what was being done and the kernel's error.
pub(crate) fn give_back(
    hold: &InUse,
    off: u64,
    len: u64,
) -> std::result::Result<Discard, (&'static str, std::io::Error)> {
    let region = &hold.0;
    let how = match (region.fd_and_offset(), region.shared) {
        (Some((fd, at)), true) => {
            crate::sys::punch_hole(fd, at + off, len)
                .map_err(|e| ("punching a hole (fallocate)", e))?;
            return Ok(Discard::PunchHole);
        }
        (None, true) => Discard::Remove,
        (_, false) => Discard::DontNeed,
    };
    let advice = match how {
        Discard::Remove => libc::MADV_REMOVE,
        _ => libc::MADV_DONTNEED,
    };
    region
        .mapped
        .map
        .madvise(off as usize, len as usize, advice)
        .map_err(|e| ("giving memory back (madvise)", e))?;
    Ok(how)
}

/// An I/O error of `b` while `what`.
pub(crate) fn io_error(b: &Backend, what: &str, source: std::io::Error) -> Error {
    Error::Io {
        kind: b.kind().qom_type(),
        id: b.id().to_string(),
        what: what.to_string(),
        source,
    }
}

impl Backend {
    /// Gives the memory of `range` (bytes of the backend's memory, whole pages of its
    /// page size) back to the kernel, as a balloon's inflate or free page reporting
    /// asks: MADV_DONTNEED for private memory, MADV_REMOVE for shared anonymous
    /// memory, a hole punched in the memfd, shm object, hugetlbfs or other file
    /// otherwise ([`Discard`] says which). The memory stays mapped and accessible.
    ///
    /// A balloon discards under a running guest, so a range inside a live vm-memory
    /// region (or a KVM slot) is allowed: the guest or the VMM touching it later gets
    /// fresh zeroed memory (a private file mapping: the file's bytes), as after any
    /// discard. One exception: huge pages without a reservation (`reserve=off`), where
    /// that touch could find the pool empty and raise SIGBUS in the VMM. There a range
    /// under a live region is refused, and a range outside any region loses its
    /// plugged marks (and the whole-mapping "preallocated" state), so no region can be
    /// made over it until its blocks are plugged again.
    ///
    /// Refused on huge pages with a reservation: a hole punched in hugetlbfs (or
    /// MADV_DONTNEED of private huge pages) gives the reservation back with the pages,
    /// so memory promised never to SIGBUS would then be able to. Refused on read-only
    /// memory (a discard would change what it maps: a file's bytes) and for a range
    /// that is empty, leaves the memory or is not whole pages.
    pub fn discard(&self, range: Range<u64>) -> Result<Discard> {
        let hold = self.hold()?;
        let region = &hold.0;
        let (page, len) = (hold.page_size(), hold.len() as u64);
        let (start, end) = (range.start, range.end);
        let refuse = |why: String| Error::Refused(format!("backend '{}': {why}", self.id()));
        if start >= end || end > len || !start.is_multiple_of(page) || !end.is_multiple_of(page) {
            return Err(refuse(format!(
                "cannot discard {start}..{end}: not a range of whole {page}-byte pages inside its {len} bytes"
            )));
        }
        if !hold.is_writable() {
            return Err(refuse(
                "its memory is read-only: a discard would change what it maps".into(),
            ));
        }
        if region.hugetlb && region.faults_backed {
            return Err(refuse(
                "its huge pages are reserved (reserve=on): a discard would drop the range's reservation, which is what keeps a later touch from raising SIGBUS; map it with reserve=off and plug blocks to give memory back".into(),
            ));
        }
        // Under the claims' lock from the check to the discard: no region can be made
        // over the range while it loses its memory.
        let mut claims = region.claims.lock().unwrap_or_else(|e| e.into_inner());
        if !region.faults_backed {
            if let Some(c) = region_over(&claims, start, end) {
                return Err(refuse(format!(
                    "bytes {start}..{end} are part of the guest region at {:#x} and its huge pages are not reserved (reserve=off): a touch after the discard could find the pool empty and raise SIGBUS; drop the region first",
                    c.guest
                )));
            }
            region.populated.store(false, Ordering::Release);
            set_marks(&mut claims, PLUGGED, start, end, false);
        }
        give_back(&hold, start, end - start).map_err(|(what, e)| io_error(self, what, e))
    }
}
