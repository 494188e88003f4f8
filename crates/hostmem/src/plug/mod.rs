//! Growing and shrinking a live backend's memory block by block (DESIGN §11): the host
//! side of virtio-mem. The backend is mapped without reserving (`reserve=off`) up to its
//! maximum; [`Blocks`] plugs blocks (huge page pool checked, preallocated by the populate
//! engine on the policy's nodes, made accessible) and unplugs them (memory given back
//! to the kernel, optionally made inaccessible so a stray access is an error instead of
//! a silent refill). [`Backend::discard`] gives any backend's memory back the same way,
//! for balloons and free page reporting (`discard.rs`).
//!
//! The plugged and protected state lives in one place: the `PLUGGED` and
//! `PROTECTED` marks in the memory's claims (`backend/claim.rs`), which the
//! vm-memory region checks read under the same lock. [`Blocks`] keeps no copy of its
//! own, so what it says and what the region checks see cannot disagree, and a second
//! `Blocks` over the same memory sees the first one's blocks.
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

mod discard;
#[cfg(test)]
mod tests;

use std::ops::Range;

pub use discard::Discard;

use crate::backend::claim::{covers, marked, region_over, set_marks, touches, PLUGGED, PROTECTED};
use crate::backend::room::Guard;
use crate::backend::{Backend, InUse};
use crate::error::{Error, Result};
use crate::limits::Snapshot;
use crate::numa::HostTopology;
use crate::prealloc::{self, Failure, Progress, Stats};
use crate::sys;

/// The blocks of a live backend, each plugged or not.
///
/// Holds the memory ([`InUse`]) and borrows the backend, whose policy and pools each
/// plug asks about. Which blocks are plugged or protected is read from the memory's
/// marks each time (see the module docs); what the kernel has is
/// [`Blocks::resident_per_block`].
#[derive(Debug)]
pub struct Blocks<'a> {
    backend: &'a Backend,
    hold: InUse,
    block: u64,
    count: usize,
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

/// One block's state before a plug, to put back if the plug fails.
#[derive(Debug, Clone, Copy)]
struct Was {
    plugged: bool,
    protected: bool,
}

impl<'a> Blocks<'a> {
    /// Blocks of `block_size` bytes over a live backend made with `reserve=off` (with a
    /// reservation unplugged memory would stay charged to it). The block size is a
    /// multiple of the backend's page size and divides its length. A block counts as
    /// plugged if it is marked so already (by an earlier `Blocks` over the same
    /// memory: the marks are the record) or if the kernel reports every page of it
    /// resident and it is not protected; all others as unplugged.
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
        let blocks = Blocks {
            backend,
            hold,
            block: block_size,
            count: (len / block_size) as usize,
        };
        let resident = blocks.resident_per_block(0..len)?;
        let hold = blocks.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in resident.into_iter().enumerate() {
            let (off, end) = blocks.span(i, i + 1);
            if r == block_size && !touches(&claims, PROTECTED, off, end) {
                set_marks(&mut claims, PLUGGED, off, end, true);
            }
        }
        drop(claims);
        Ok(blocks)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// How many blocks the memory has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The hold on the memory, for copies in and out ([`InUse::read_at`] is an error on
    /// a protected unplugged block).
    pub fn memory(&self) -> &InUse {
        &self.hold
    }

    /// The plugged blocks as byte ranges of the memory, adjacent blocks joined. A block
    /// part of which was discarded ([`Backend::discard`] of unreserved huge pages) is
    /// not plugged any more.
    pub fn plugged(&self) -> Vec<Range<u64>> {
        let claims = self.hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Range<u64>> = Vec::new();
        for (a, b) in marked(&claims, PLUGGED) {
            let (a, b) = (a.next_multiple_of(self.block), b / self.block * self.block);
            match out.last_mut() {
                _ if a >= b => {}
                Some(last) if last.end == a => last.end = b,
                _ => out.push(a..b),
            }
        }
        out
    }

    /// Whether block `index` is plugged.
    pub fn is_plugged(&self, index: usize) -> bool {
        if index >= self.count {
            return false;
        }
        let (off, end) = self.span(index, index + 1);
        let claims = self.hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        covers(&claims, PLUGGED, off, end)
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
    /// asked first (pages needed against pages free, an error naming the pool), and
    /// the memory limits a preallocation of that size meets (bound nodes, host, memory
    /// and hugetlb cgroups); then the range is made accessible and preallocated by the
    /// populate engine, its threads on the CPUs of the policy's nodes, under the same
    /// watch as a backend's preallocation: every step re-reads those limits, so another
    /// process taking the room meanwhile stops the plug before the OOM killer would
    /// choose a victim, and a fault that fails is an error, never SIGBUS.
    ///
    /// A plug is whole or nothing, as virtio-mem's answer to a plug request is: on any
    /// failure the blocks of the range that were not plugged before are given back
    /// (and protected again if they were), blocks plugged before stay, and the error
    /// names what was short (a stop at a watched limit says how far it got).
    pub fn plug(&mut self, range: Range<u64>) -> Result<PlugReport> {
        self.plug_with(range, None)
    }

    /// [`Blocks::plug`], checked against the limits' figures in `limits` (None: read
    /// now; tests give chosen ones).
    pub(crate) fn plug_with(
        &mut self,
        range: Range<u64>,
        limits: Option<Snapshot>,
    ) -> Result<PlugReport> {
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
        let snap =
            limits.unwrap_or_else(|| Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes));
        let guard = Guard::for_more(self.backend, absent * page, snap)?;
        let was = self.states(first, last);
        self.set_access(first, last, true)?;
        let threads = self.backend.config().common.prealloc_threads;
        let mut job = self.backend.job(&region, &host, threads)?;
        job.part = Some((off, len));
        if absent > 0 {
            // Nothing to fault in, nothing to watch: a step over resident pages takes no room.
            guard.attach(0, &mut job);
        }
        let r = prealloc::populate(std::slice::from_ref(&job), &Progress::new()).pop();
        drop(job);
        match r {
            Some(Ok(stats)) => {
                let mut claims = region.claims.lock().unwrap_or_else(|e| e.into_inner());
                set_marks(&mut claims, PLUGGED, range.start, range.end, true);
                drop(claims);
                Ok(PlugReport {
                    newly_plugged: was.iter().filter(|w| !w.plugged).count() as u64,
                    huge_pages_needed: needed,
                    stats,
                })
            }
            Some(Err(f)) => {
                self.undo_plug(first, &was);
                let edge = match &f {
                    Failure::Edge(edge) => guard.edge_error(self.backend, edge),
                    _ => None,
                };
                let (page, hugetlb) = (region.page_size, region.hugetlb);
                let bytes = if hugetlb { needed * page } else { len };
                Err(edge.unwrap_or_else(|| {
                    self.backend
                        .prealloc_error(f, page, hugetlb, bytes as usize)
                }))
            }
            // populate answers once per job.
            None => Err(Error::Refused("the populate engine gave no result".into())),
        }
    }

    /// Each block of `[first, last)`: plugged, protected (read from the marks).
    fn states(&self, first: usize, last: usize) -> Vec<Was> {
        let claims = self.hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        (first..last)
            .map(|i| {
                let (off, end) = self.span(i, i + 1);
                Was {
                    plugged: covers(&claims, PLUGGED, off, end),
                    protected: touches(&claims, PROTECTED, off, end),
                }
            })
            .collect()
    }

    /// Gives the blocks of a failed plug that were not plugged before back, and puts
    /// back their protection; best effort (the plug's own error is the one reported).
    fn undo_plug(&mut self, first: usize, was: &[Was]) {
        for (i, w) in (first..).zip(was) {
            if w.plugged {
                continue;
            }
            let (off, end) = self.span(i, i + 1);
            let _ = discard::give_back(&self.hold, off, end - off);
            if w.protected {
                let _ = self.set_access(i, i + 1, false);
            }
        }
    }

    /// Unplugs the blocks of `range` (whole blocks): their memory goes back to the
    /// kernel ([`Discard`]), and with `protect` they become PROT_NONE, so an access
    /// through [`InUse`] copies is an error and a guest's access faults instead of
    /// silently getting fresh memory.
    ///
    /// Under a live vm-memory guest region (a KVM slot kept over partly plugged memory,
    /// as Firecracker keeps its 128 MiB slots) an unplug without `protect` is allowed
    /// where a later touch refills the memory: it is then what a balloon's discard is.
    /// It is refused under a region with `protect` (the region's copies are not checked
    /// and would crash the VMM) and over huge pages without a reservation (a touch
    /// could find the pool empty: SIGBUS).
    pub fn unplug(&mut self, range: Range<u64>, protect: bool) -> Result<UnplugReport> {
        let (first, last) = self.blocks_of(&range)?;
        let (off, end) = (range.start, range.end);
        // Under the claims' lock from the check to the last mark: no region can be made
        // over these blocks while they lose their memory (its claim would see them
        // still plugged, then find them gone).
        let hold = self.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = region_over(&claims, off, end) {
            let why = if protect {
                Some("cannot make them inaccessible under it")
            } else if !hold.0.faults_backed {
                Some("its huge pages are not reserved, so a touch through the region could find the pool empty (SIGBUS)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::Refused(format!(
                    "backend '{}': bytes {off}..{end} are part of a guest region at {:#x}: {why}; unplug them after dropping the region",
                    self.backend.id(),
                    c.guest
                )));
            }
        }
        let were = (first..last)
            .filter(|&i| {
                let (a, b) = self.span(i, i + 1);
                covers(&claims, PLUGGED, a, b)
            })
            .count() as u64;
        let how = discard::give_back(&hold, off, end - off)
            .map_err(|(what, e)| self.io_error(what, e))?;
        // What was faulted in is gone: vm-memory may no longer trust the whole mapping,
        // only the blocks still plugged.
        hold.0
            .populated
            .store(false, std::sync::atomic::Ordering::Release);
        set_marks(&mut claims, PLUGGED, off, end, false);
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

    /// Makes blocks `[first, last)` accessible or PROT_NONE, and marks which in the
    /// memory's claims (`PROTECTED`), under the claims' lock and after checking that no
    /// guest region covers them: a vm-memory region over PROT_NONE memory would crash
    /// the VMM at its first access (its copies are not checked), so no region can be
    /// made there until the block is plugged again.
    fn set_access(&mut self, first: usize, last: usize, accessible: bool) -> Result<()> {
        let (off, end) = self.span(first, last);
        let hold = self.hold.clone();
        let mut claims = hold.0.claims.lock().unwrap_or_else(|e| e.into_inner());
        if accessible && !touches(&claims, PROTECTED, off, end) {
            return Ok(());
        }
        if !accessible {
            if let Some(c) = region_over(&claims, off, end) {
                return Err(Error::Refused(format!(
                    "backend '{}': bytes {off}..{end} are part of a guest region at {:#x}: cannot make them inaccessible under it",
                    self.backend.id(),
                    c.guest
                )));
            }
        }
        hold.0
            .mapped
            .map
            .protect(off as usize, (end - off) as usize, accessible)
            .map_err(|e| self.io_error("changing protection (mprotect)", e))?;
        set_marks(&mut claims, PROTECTED, off, end, !accessible);
        Ok(())
    }

    /// Byte offsets `[start, end)` of blocks `[first, last)`.
    fn span(&self, first: usize, last: usize) -> (u64, u64) {
        (first as u64 * self.block, last as u64 * self.block)
    }

    /// The block indices `[first, last)` of a range of whole blocks inside the memory.
    fn blocks_of(&self, range: &Range<u64>) -> Result<(usize, usize)> {
        let len = self.count as u64 * self.block;
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
        discard::io_error(self.backend, what, source)
    }
}
