//! Growing and shrinking a live backend's memory block by block (DESIGN §11): the host
//! side of virtio-mem. The backend is mapped without reserving (`reserve=off`) up to its
//! maximum; [`Blocks`] plugs blocks (huge page pool checked, preallocated by the populate
//! engine on the policy's nodes, made accessible) and unplugs them (memory given back
//! to the kernel, optionally made inaccessible so a stray access is an error instead of
//! a silent refill).
//!
//! ```no_run
//! use hostmem::{plug::Blocks, Backend, Kind};
//! let mem = Backend::builder(Kind::Memfd, "mem0")
//!     .size(4 << 30)
//!     .reserve(false)
//!     .create()?;
//! let mut blocks = Blocks::new(&mem, 2 << 20)?;
//! blocks.plug(0..1 << 30)?;
//! blocks.unplug(512 << 20..1 << 30, true)?;
//! # Ok::<(), hostmem::Error>(())
//! ```

use std::ops::Range;

use crate::backend::claim::{set_marks, Claimed, PLUGGED, PROTECTED};
use crate::backend::room;
use crate::backend::{Backend, InUse};
use crate::error::{Error, Result};
use crate::limits::Snapshot;
use crate::numa::HostTopology;
use crate::prealloc::{self, Progress, Stats};
use crate::sys;

/// The blocks of a live backend, each plugged or not.
///
/// Holds the memory ([`InUse`]) and borrows the backend, whose policy and pools each
/// plug asks about. Bookkeeping here only says what this object did; what the kernel
/// has is [`Blocks::resident_per_block`].
#[derive(Debug)]
pub struct Blocks<'a> {
    backend: &'a Backend,
    hold: InUse,
    block: u64,
    /// One entry per block: plugged.
    plugged: Vec<bool>,
    /// One entry per block: made PROT_NONE by an unplug.
    protected: Vec<bool>,
}

/// What a plug did.
#[derive(Debug, Clone, PartialEq)]
pub struct PlugReport {
    /// Blocks of the range that were not plugged before and are now.
    pub newly_plugged: u64,
    /// Huge pages the pool had to give (pages of the range not yet faulted in); 0 for
    /// memory of base pages.
    pub huge_pages_needed: u64,
    /// The populate engine's run over the range.
    pub stats: Stats,
}

/// What an unplug did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnplugReport {
    /// Blocks of the range that were plugged before.
    pub were_plugged: u64,
    /// How the memory was given back.
    pub how: Discard,
    /// Whether the range is PROT_NONE now.
    pub protected: bool,
}

/// How unplugged memory goes back to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discard {
    /// MADV_DONTNEED: private memory (its pages are this mapping's own).
    DontNeed,
    /// MADV_REMOVE: shared anonymous memory (`memory-backend-ram,share=on`), whose
    /// pages live in an shm object only the mapping names.
    Remove,
    /// fallocate(PUNCH_HOLE|KEEP_SIZE) at the memory's offset in its memfd, shm object,
    /// hugetlbfs or other file: the pages leave the file, for every mapping of it.
    PunchHole,
}

impl<'a> Blocks<'a> {
    /// Blocks of `block_size` bytes over a live backend made with `reserve=off` (with a
    /// reservation unplugged memory would stay charged to it). The block size is a
    /// multiple of the backend's page size and divides its length. A block whose every
    /// page the kernel reports resident counts as plugged; all others as unplugged.
    pub fn new(backend: &'a Backend, block_size: u64) -> Result<Blocks<'a>> {
        let hold = backend.hold()?;
        let refuse =
            |why: String| Err(Error::Refused(format!("backend '{}': {why}", backend.id())));
        if backend.config().common.reserve {
            return refuse(
                "blocks can only be plugged in memory mapped without a reservation (reserve=off)"
                    .into(),
            );
        }
        let (page, len) = (hold.page_size(), hold.len() as u64);
        if block_size < page || !block_size.is_multiple_of(page) {
            return refuse(format!(
                "block size {block_size} is not a multiple of the page size {page}"
            ));
        }
        if !len.is_multiple_of(block_size) {
            return refuse(format!(
                "block size {block_size} does not divide the memory's {len} bytes"
            ));
        }
        let n = (len / block_size) as usize;
        let mut blocks = Blocks {
            backend,
            hold,
            block: block_size,
            plugged: vec![false; n],
            protected: vec![false; n],
        };
        let resident = blocks.resident_per_block(0..len)?;
        for (p, r) in blocks.plugged.iter_mut().zip(resident) {
            *p = r == block_size;
        }
        let hold = blocks.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        blocks.mark_plugged(&mut claims, 0, n);
        drop(claims);
        Ok(blocks)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// How many blocks the memory has.
    pub fn count(&self) -> usize {
        self.plugged.len()
    }

    /// The hold on the memory, for copies in and out ([`InUse::read_at`] is an error on
    /// a protected unplugged block).
    pub fn memory(&self) -> &InUse {
        &self.hold
    }

    /// The plugged blocks as byte ranges of the memory, adjacent blocks joined.
    pub fn plugged(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for (i, _) in self.plugged.iter().enumerate().filter(|(_, &p)| p) {
            let start = i as u64 * self.block;
            match out.last_mut() {
                Some(last) if last.end == start => last.end += self.block,
                _ => out.push(start..start + self.block),
            }
        }
        out
    }

    /// Whether block `index` is plugged.
    pub fn is_plugged(&self, index: usize) -> bool {
        self.plugged.get(index).copied().unwrap_or(false)
    }

    /// Resident bytes of each block of `range`, as the kernel reports them now
    /// (mincore: for shared memory the pages of the file, whoever maps them).
    pub fn resident_per_block(&self, range: Range<u64>) -> Result<Vec<u64>> {
        let (first, last) = self.blocks_of(&range)?;
        let map = &self.hold.0.mapped.map;
        let base = sys::page_size() as u64;
        let pages = map
            .resident_pages(range.start as usize, (range.end - range.start) as usize)
            .map_err(|e| self.io_error("reading residency (mincore)", e))?;
        let per_block = (self.block / base) as usize;
        let out = pages
            .chunks(per_block)
            .map(|c| c.iter().filter(|&&r| r).count() as u64 * base)
            .collect::<Vec<_>>();
        debug_assert_eq!(out.len(), last - first);
        Ok(out)
    }

    /// Plugs the blocks of `range` (whole blocks): for huge page memory the pool is
    /// asked first (pages needed against pages free, an error naming the pool), then
    /// the range is made accessible and preallocated by the populate engine, its
    /// threads on the CPUs of the policy's nodes, so a fault that fails is an error,
    /// never SIGBUS. On failure the blocks of the range that were not plugged are
    /// given back (and protected again if they were); blocks plugged before stay.
    pub fn plug(&mut self, range: Range<u64>) -> Result<PlugReport> {
        let (first, last) = self.blocks_of(&range)?;
        let region = self.hold.0.clone();
        let host = HostTopology::read();
        let (off, len) = (range.start, range.end - range.start);
        // What the plug will make resident: the pages of the range the kernel does not
        // have yet.
        let page = region.page_size;
        let base = sys::page_size() as u64;
        let pages = region
            .mapped
            .map
            .resident_pages(off as usize, len as usize)
            .map_err(|e| self.io_error("reading residency (mincore)", e))?;
        let per_page = (page / base).max(1) as usize;
        let absent = pages.chunks(per_page).filter(|c| !c[0]).count() as u64;
        let mut needed = 0;
        if region.hugetlb {
            needed = absent;
            crate::backend::capacity::check_pool(self.backend, needed, page, &host, true)?;
        }
        // The memory limits a preallocation of that size meets (bound nodes, host,
        // memory and hugetlb cgroups), before any page: a plug the host cannot give is
        // an error naming the limit, not the OOM killer.
        let limits = Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes);
        room::check_more(self.backend, absent * page, &limits)?;
        let was_protected = self.protected[first..last].to_vec();
        self.set_access(first, last, true)?;
        let threads = self.backend.config().common.prealloc_threads;
        let mut job = self.backend.job(&region, &host, threads)?;
        job.part = Some((off, len));
        let r = prealloc::populate(std::slice::from_ref(&job), &Progress::new()).pop();
        drop(job);
        match r {
            Some(Ok(stats)) => {
                let newly = self.plugged[first..last].iter().filter(|p| !**p).count();
                self.plugged[first..last].fill(true);
                let hold = self.hold.clone();
                let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
                self.mark_plugged(&mut claims, first, last);
                drop(claims);
                Ok(PlugReport {
                    newly_plugged: newly as u64,
                    huge_pages_needed: needed,
                    stats,
                })
            }
            Some(Err(f)) => {
                self.undo_plug(first, &was_protected);
                let (page, hugetlb) = (region.page_size, region.hugetlb);
                let bytes = if hugetlb { needed * page } else { len };
                Err(self
                    .backend
                    .prealloc_error(f, page, hugetlb, bytes as usize))
            }
            // populate answers once per job.
            None => Err(Error::Refused("the populate engine gave no result".into())),
        }
    }

    /// Gives the blocks of a failed plug that were not plugged before back, and puts
    /// back their protection; best effort (the plug's own error is the one reported).
    fn undo_plug(&mut self, first: usize, was_protected: &[bool]) {
        for (i, &protected) in (first..).zip(was_protected) {
            if self.plugged[i] {
                continue;
            }
            let _ = self.discard(i, i + 1);
            if protected {
                let _ = self.set_access(i, i + 1, false);
            }
        }
    }

    /// Unplugs the blocks of `range` (whole blocks): their memory goes back to the
    /// kernel ([`Discard`]), and with `protect` they become PROT_NONE, so an access
    /// through [`InUse`] copies is an error and a guest's access faults instead of
    /// silently getting fresh memory. Refused over a range that is a vm-memory guest
    /// region now (its accesses are not checked copies).
    pub fn unplug(&mut self, range: Range<u64>, protect: bool) -> Result<UnplugReport> {
        let (first, last) = self.blocks_of(&range)?;
        // Under the claims' lock from the check to the last mark: no region can be made
        // over these blocks while they lose their memory (its claim would see them
        // still plugged, then find them gone).
        let hold = self.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        let claimed = claims
            .iter()
            .find(|c| {
                c.guest != PROTECTED
                    && c.guest != PLUGGED
                    && range.start < c.offset + c.len
                    && c.offset < range.end
            })
            .map(|c| c.guest);
        if let Some(guest) = claimed {
            return Err(Error::Refused(format!(
                "backend '{}': bytes {}..{} are part of a guest region at {guest:#x}: unplug them after dropping the region",
                self.backend.id(),
                range.start,
                range.end
            )));
        }
        let how = self.discard(first, last)?;
        // What was faulted in is gone: vm-memory may no longer trust the whole mapping,
        // only the blocks still plugged.
        self.hold
            .0
            .populated
            .store(false, std::sync::atomic::Ordering::Release);
        let were = self.plugged[first..last].iter().filter(|p| **p).count() as u64;
        self.plugged[first..last].fill(false);
        self.mark_plugged(&mut claims, first, last);
        drop(claims);
        if protect {
            self.set_access(first, last, false)?;
        }
        Ok(UnplugReport {
            were_plugged: were,
            how,
            protected: protect,
        })
    }

    /// Gives the memory of blocks `[first, last)` back to the kernel.
    fn discard(&self, first: usize, last: usize) -> Result<Discard> {
        let region = &self.hold.0;
        let map = &region.mapped.map;
        let (off, len) = (
            first as u64 * self.block,
            (last - first) as u64 * self.block,
        );
        let how = match (region.fd_and_offset(), region.shared) {
            (Some((fd, at)), true) => {
                sys::punch_hole(fd, at + off, len)
                    .map_err(|e| self.io_error("punching a hole (fallocate)", e))?;
                return Ok(Discard::PunchHole);
            }
            (None, true) => Discard::Remove,
            (_, false) => Discard::DontNeed,
        };
        let advice = match how {
            Discard::Remove => libc::MADV_REMOVE,
            _ => libc::MADV_DONTNEED,
        };
        map.madvise(off as usize, len as usize, advice)
            .map_err(|e| self.io_error("giving memory back (madvise)", e))?;
        Ok(how)
    }

    /// Writes the plugged state of blocks `[first, last)` into the memory's claims
    /// ([`PLUGGED`] marks, kept as ranges), which a vm-memory region over
    /// memory without a reservation must be covered by (`backend/claim.rs`).
    fn mark_plugged(&self, claims: &mut Vec<Claimed>, first: usize, last: usize) {
        let mut i = first;
        while i < last {
            let on = self.plugged[i];
            let run = self.plugged[i..last]
                .iter()
                .take_while(|&&p| p == on)
                .count();
            let (off, end) = (i as u64 * self.block, (i + run) as u64 * self.block);
            set_marks(claims, PLUGGED, off, end, on);
            i += run;
        }
    }

    /// Makes blocks `[first, last)` accessible or PROT_NONE, and notes which. A
    /// protected block is also marked in the memory's claims (`backend/claim.rs`,
    /// [`PROTECTED`]), under the claims' lock and after checking that no guest region
    /// covers it: a vm-memory region over PROT_NONE memory would crash the VMM at its
    /// first access (its copies are not checked), so no region can be made there until
    /// the block is plugged again.
    fn set_access(&mut self, first: usize, last: usize, accessible: bool) -> Result<()> {
        if accessible && !self.protected[first..last].contains(&true) {
            return Ok(());
        }
        let (off, len) = (
            first as u64 * self.block,
            (last - first) as u64 * self.block,
        );
        let hold = self.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        if !accessible {
            if let Some(c) = claims.iter().find(|c| {
                c.guest != PROTECTED
                    && c.guest != PLUGGED
                    && off < c.offset + c.len
                    && c.offset < off + len
            }) {
                return Err(Error::Refused(format!(
                    "backend '{}': bytes {off}..{} are part of a guest region at {:#x}: cannot make them inaccessible under it",
                    self.backend.id(),
                    off + len,
                    c.guest
                )));
            }
        }
        hold.0
            .mapped
            .map
            .protect(off as usize, len as usize, accessible)
            .map_err(|e| self.io_error("changing protection (mprotect)", e))?;
        set_marks(&mut claims, PROTECTED, off, off + len, !accessible);
        drop(claims);
        self.protected[first..last].fill(!accessible);
        Ok(())
    }

    /// The block indices `[first, last)` of a range of whole blocks inside the memory.
    fn blocks_of(&self, range: &Range<u64>) -> Result<(usize, usize)> {
        let len = self.plugged.len() as u64 * self.block;
        if range.start >= range.end
            || range.end > len
            || !range.start.is_multiple_of(self.block)
            || !range.end.is_multiple_of(self.block)
        {
            return Err(Error::Refused(format!(
                "backend '{}': {}..{} is not a range of whole {}-byte blocks inside its {len} bytes",
                self.backend.id(),
                range.start,
                range.end,
                self.block
            )));
        }
        Ok((
            (range.start / self.block) as usize,
            (range.end / self.block) as usize,
        ))
    }

    fn io_error(&self, what: &str, source: std::io::Error) -> Error {
        Error::Io {
            kind: self.backend.kind().qom_type(),
            id: self.backend.id().to_string(),
            what: what.to_string(),
            source,
        }
    }
}
