//! The lazy restore's moving parts: the image's blocks as *units* of memory, the
//! threads that serve faults and fill in the background, and how one unit is served.
//!
//! A data block is served whole: read, checked against its checksum, then copied with
//! one UFFDIO_COPY over every page of it not yet present. Why whole blocks: the
//! checksum covers the block, so its bytes must all be read and hashed before any of
//! them may reach memory; once they are, installing all of them costs one copy more and
//! saves the block's other pages a fault each. Copying the touched page first and the
//! rest after was measured slower (the next fault then waits behind the rest's copy);
//! numbers in `docs/snapshot.md`. With chunk checksums (`chunks.rs`: written by `save`,
//! or learned by an earlier run), a fault serves just its chunk (one 4 KiB page as
//! `save` writes them), checked against its own sum; the fill still takes the block
//! whole, checked against the block table.
//! A unit of a chain that a diff touches is served whole, never by chunk
//! (`chainread.rs`).
//! A hole is served a page at a time (the zero page, or a huge page of zeros on
//! hugetlb), only where touched: shmem and hugetlb allocate a page for it, so the
//! background fill leaves holes alone and they stay non-resident.
//!
//! Each data unit has a lock held while it is served, and a state: pending, done (every
//! page not discarded was copied) or failed (every page not present was poisoned). A
//! fault on a done unit can only be a page discarded since (MADV_DONTNEED/REMOVE, read
//! as zeros) or a fault raced by the copy, so it is answered with zeros, which never
//! overwrite a present page.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use super::super::chain::Piece;
use super::super::format::{BlockAt, BlockKind};
use super::super::image::Image;
use super::super::{BlockFault, SnapshotError};
use super::chunks::{sums_of, ChunkSums, CHUNK};
use super::LazyRegion;
use crate::sys::uffd::{Event, Fill, Uffd};

/// Messages read at once.
pub(super) const BATCH: usize = 64;

/// Bytes per `pread` when a unit is read to be served. This kernel does not preempt a
/// thread inside a read (PREEMPT_NONE), so a fill thread reading a whole 2 MiB block
/// held up a faulting thread woken on its CPU for the whole copy: at 8 GiB, 4 KiB first
/// touches during the fill went from p99 256–314 µs to 59–164 µs with 64 KiB reads.
pub(super) const READ_PIECE: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Pending,
    Done,
    Failed,
}

/// One image block where it lies in the uffd's address space.
#[derive(Debug)]
pub(super) struct Unit {
    pub at: BlockAt,
    pub host: u64,
    pub page: u64,
    pub kind: BlockKind,
    /// Empty: the unit is the full image's block as it is. Else the pieces a chain's
    /// diffs make of it (`chainread.rs`): a data unit served whole, assembled.
    pub pieces: Vec<Piece>,
    pub state: Mutex<State>,
    /// Chunks (bit k of word k/64: bytes `[k·chunk, (k+1)·chunk)`) served by faults
    /// while the block is pending; empty until the first; used under `state`'s lock.
    pub served: Mutex<Vec<u64>>,
}

impl Unit {
    pub(super) fn is_data(&self) -> bool {
        matches!(self.kind, BlockKind::Data { .. } | BlockKind::Unchecked)
            || !self.pieces.is_empty()
    }
}

/// Bytes of the data units: what serving them copies into memory (whole pages: the
/// units are), a unit a diff touches whole, its holes included.
pub(super) fn data_bytes(units: &[Unit]) -> u64 {
    units.iter().filter(|u| u.is_data()).map(|u| u.at.len).sum()
}

/// What every serving thread shares.
pub(super) struct Shared {
    /// The full image (`chain[0]`): the units are its blocks.
    pub image: Arc<Image>,
    /// The images served from, oldest first: the full image, then the diffs on it.
    pub chain: Vec<Arc<Image>>,
    pub uffd: Uffd,
    pub regions: Vec<LazyRegion>,
    /// Sorted by `host`.
    pub units: Vec<Unit>,
    /// Host ranges discarded (REMOVE events): zeros from then on.
    pub removed: Mutex<Vec<(u64, u64)>>,
    /// Faults read while a copy waited for events (EAGAIN), served next.
    pub queued: Mutex<VecDeque<Event>>,
    /// The background fill's order (unit indices; empty without a fill) and the next
    /// place in it, shared by every thread that fills.
    pub fill_order: Vec<usize>,
    pub fill_next: AtomicU64,
    pub stop: AtomicBool,
    /// The uffd's address space has gone (ESRCH): nothing left to serve.
    pub gone: AtomicBool,
    pub data_units: u64,
    pub units_settled: AtomicU64,
    pub bytes_total: u64,
    pub bytes_filled: AtomicU64,
    pub faults: AtomicU64,
    pub zero_faults: AtomicU64,
    pub poisoned_bytes: AtomicU64,
    pub errors: Mutex<Vec<SnapshotError>>,
    pub error_count: AtomicU64,
    /// Block indices in the order faults first touched them.
    pub touched: Mutex<Vec<u64>>,
    pub record: bool,
    /// Chunk checksums known before (the save's, or an earlier run's): faults then
    /// serve a chunk. Set once, possibly after serving began (the sidecar of an 8 GiB
    /// image is 16 MiB, read after the memory is usable); until then faults serve
    /// whole blocks.
    pub chunk_sums: OnceLock<Arc<ChunkSums>>,
    /// Chunk checksums of the blocks verified whole in this run (with `record`), with
    /// the chunk size they were taken at.
    pub learned: Mutex<BTreeMap<u64, (u64, Vec<u64>)>>,
    pub started: Instant,
    pub filled_secs: Mutex<Option<f64>>,
    /// Signalled when the last data unit settles, an error arrives, or the space goes.
    pub changed: Condvar,
    pub changed_lock: Mutex<()>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn new(
        chain: Vec<Arc<Image>>,
        image: Arc<Image>,
        uffd: Uffd,
        regions: Vec<LazyRegion>,
        units: Vec<Unit>,
        record: bool,
        fill_order: Vec<usize>,
    ) -> Shared {
        let bytes_total = data_bytes(&units);
        let data_units = units.iter().filter(|u| u.is_data()).count() as u64;
        Shared {
            image,
            chain,
            uffd,
            regions,
            units,
            removed: Mutex::new(Vec::new()),
            queued: Mutex::new(VecDeque::new()),
            fill_order,
            fill_next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            data_units,
            units_settled: AtomicU64::new(0),
            bytes_total,
            bytes_filled: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            zero_faults: AtomicU64::new(0),
            poisoned_bytes: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
            touched: Mutex::new(Vec::new()),
            record,
            chunk_sums: OnceLock::new(),
            learned: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            filled_secs: Mutex::new(None),
            changed: Condvar::new(),
            changed_lock: Mutex::new(()),
        }
    }

    pub(super) fn filled(&self) -> bool {
        self.units_settled.load(Ordering::Acquire) >= self.data_units
    }

    pub(super) fn notify(&self) {
        let _g = lock(&self.changed_lock);
        self.changed.notify_all();
    }

    pub(super) fn fail(&self, e: SnapshotError) {
        lock(&self.errors).push(e);
        self.error_count.fetch_add(1, Ordering::Release);
        self.notify();
    }

    pub(super) fn settle(&self) {
        let n = self.units_settled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.data_units {
            *lock(&self.filled_secs) = Some(self.started.elapsed().as_secs_f64());
            self.notify();
        }
    }

    fn unit_at(&self, addr: u64) -> Option<usize> {
        let i = self
            .units
            .partition_point(|u| u.host <= addr)
            .checked_sub(1)?;
        let u = &self.units[i];
        (addr < u.host + u.at.len).then_some(i)
    }

    fn page_size_at(&self, addr: u64) -> u64 {
        self.regions
            .iter()
            .find(|r| addr >= r.host_addr && addr - r.host_addr < r.len)
            .map_or(4096, |r| r.page_size)
    }

    pub(super) fn fault(&self, addr: u64, minor: bool, buf: &mut Vec<u8>) {
        let page = self.page_size_at(addr);
        let addr = addr / page * page;
        if minor {
            // The page cache has the page (the VMM put it there): map it.
            let _ = self.settled(self.uffd.continue_(addr, page), addr, page);
            return;
        }
        let Some(i) = self.unit_at(addr) else {
            // Memory the image does not cover reads as zeros.
            self.zero(addr, page);
            return;
        };
        let u = &self.units[i];
        if !u.is_data() {
            self.zero(addr, page);
            return;
        }
        let mut state = lock(&u.state);
        match *state {
            State::Pending => {
                let mut served = lock(&u.served);
                if self.record && served.is_empty() {
                    lock(&self.touched).push(u.at.index);
                }
                let Some(sums) = self.chunk_sums_of(u) else {
                    *state = self.serve(u, buf);
                    self.settle();
                    return;
                };
                let k = (addr - u.host) / self.chunk();
                served.resize(sums.len().div_ceil(64), 0);
                let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
                if served[word] & bit != 0 {
                    // Served, then discarded: zeros, as without a restore.
                    self.zero(addr, page);
                } else if let Err(e) = self.serve_chunk(u, k, sums[k as usize], buf) {
                    self.fail(e);
                    self.poison_unit(u);
                    *state = State::Failed;
                    self.settle();
                } else {
                    served[word] |= bit;
                }
            }
            State::Done => self.zero(addr, page),
            State::Failed => {
                let _ = self.settled(self.uffd.poison(addr, page), addr, page);
            }
        }
    }

    /// The chunk checksums of a pending unit, when known and usable: chunks of whole
    /// pages (a hugetlb page larger than the chunk is served with its block).
    fn chunk_sums_of(&self, u: &Unit) -> Option<&[u64]> {
        if !u.pieces.is_empty() {
            // The sums are the full image's; a diff changed this unit's bytes.
            return None;
        }
        let known = self.chunk_sums.get()?;
        let sums = known.blocks.get(&u.at.index)?;
        let fits = known.chunk.is_multiple_of(u.page)
            && sums.len() as u64 == u.at.len.div_ceil(known.chunk);
        fits.then_some(sums.as_slice())
    }

    /// Bytes per chunk: the known sums' size, else `CHUNK` (for the sums learned).
    pub(super) fn chunk(&self) -> u64 {
        self.chunk_sums.get().map_or(CHUNK, |c| c.chunk)
    }

    /// Serves chunk `k` of a pending unit (its lock held): read, checked against its
    /// chunk checksum, copied over its pages not present.
    fn serve_chunk(
        &self,
        u: &Unit,
        k: u64,
        sum: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), SnapshotError> {
        let chunk = self.chunk();
        let from = k * chunk;
        let len = chunk.min(u.at.len - from);
        buf.resize(len as usize, 0);
        let fault = |f| self.block_error(0, &u.at, f);
        let mut got = 0usize;
        while got < buf.len() {
            let at = u.at.file_offset + from + got as u64;
            match std::os::unix::fs::FileExt::read_at(self.image.file(), &mut buf[got..], at) {
                Ok(0) => {
                    return Err(fault(BlockFault::ShortRead {
                        want: u.at.len,
                        got: from + got as u64,
                    }))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fault(BlockFault::Read(e))),
            }
        }
        let found = super::super::block_checksum(buf);
        if found != sum {
            return Err(fault(BlockFault::Checksum {
                expected: sum,
                found,
            }));
        }
        let n = self
            .copy_runs(u, from, buf)
            .map_err(|e| fault(BlockFault::Write(e)))?;
        self.bytes_filled.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Zeros for a hole page (the zero page; a huge page of zeros on hugetlb, where
    /// UFFDIO_ZEROPAGE is refused).
    fn zero(&self, addr: u64, page: u64) {
        self.zero_faults.fetch_add(1, Ordering::Relaxed);
        let r = if page > 4096 {
            zeros_copy(&self.uffd, addr, page)
        } else {
            self.uffd.zeropage(addr, page)
        };
        if let Err(e) = self.settled(r, addr, page) {
            // No page to give (an empty huge page pool): the toucher must not wait on.
            if !self.gone.load(Ordering::Relaxed) {
                self.fail(SnapshotError::Io {
                    what: "zero-filling a page for",
                    path: self.image.path().to_path_buf(),
                    source: e,
                });
                let _ = self.uffd.poison(addr, page);
                self.poisoned_bytes.fetch_add(page, Ordering::Relaxed);
            }
        }
    }

    /// A fill's answer for one page: EEXIST (present already) wakes the waiters; ESRCH
    /// means the address space is gone.
    fn settled(&self, r: Fill, addr: u64, len: u64) -> io::Result<()> {
        match r {
            Fill::Done => Ok(()),
            Fill::Exists { .. } => {
                let _ = self.uffd.wake(addr, len);
                Ok(())
            }
            Fill::Failed { err, .. } => {
                if err.raw_os_error() == Some(libc::ESRCH) {
                    self.gone.store(true, Ordering::Relaxed);
                    self.notify();
                }
                Err(err)
            }
        }
    }

    /// Serves a pending data unit (its lock held): checked bytes copied over every page
    /// not present and not discarded, or, when the bytes cannot be had, every page not
    /// present poisoned and the error kept.
    pub(super) fn serve(&self, u: &Unit, buf: &mut Vec<u8>) -> State {
        let bytes = match self.unit_bytes(u, buf) {
            Ok(b) => b,
            Err(e) => {
                // The error first: by the time the toucher sees SIGBUS, progress() has it.
                self.fail(e);
                self.poison_unit(u);
                return State::Failed;
            }
        };
        match self.copy_runs(u, 0, bytes) {
            Ok(n) => {
                self.bytes_filled.fetch_add(n, Ordering::Relaxed);
                let known = self.chunk_sums_of(u).is_some();
                let chunk = self.chunk();
                if self.record && !known && chunk.is_multiple_of(u.page) {
                    let sums = sums_of(bytes, chunk);
                    lock(&self.learned).insert(u.at.index, (chunk, sums));
                }
                State::Done
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => State::Failed,
            Err(e) => {
                self.fail(self.block_error(0, &u.at, BlockFault::Write(e)));
                self.poison_unit(u);
                State::Failed
            }
        }
    }

    /// The unit's host ranges that were not discarded.
    fn runs(&self, u: &Unit) -> Vec<(u64, u64)> {
        let (start, end) = (u.host, u.host + u.at.len);
        let mut runs = vec![(start, end)];
        for &(rs, re) in lock(&self.removed).iter() {
            let (rs, re) = (rs.max(start), re.min(end));
            if rs >= re {
                continue;
            }
            runs = runs
                .into_iter()
                .flat_map(|(a, b)| {
                    let mut out = Vec::new();
                    if a < rs.min(b) {
                        out.push((a, rs.min(b)));
                    }
                    if re.max(a) < b {
                        out.push((re.max(a), b));
                    }
                    out
                })
                .collect();
        }
        // Whole pages only (discards come in pages, but a guard costs nothing).
        runs.into_iter()
            .map(|(a, b)| (a.div_ceil(u.page) * u.page, b / u.page * u.page))
            .filter(|(a, b)| a < b)
            .collect()
    }

    /// Copies `bytes`, the unit's from offset `from`, over its pages, skipping present
    /// ones (EEXIST), page by page past each; bytes copied.
    fn copy_runs(&self, u: &Unit, from: u64, bytes: &[u8]) -> io::Result<u64> {
        let (lo, hi) = (u.host + from, u.host + from + bytes.len() as u64);
        let mut copied = 0;
        let mut attempts = 0;
        'again: loop {
            for (a, b) in self.runs(u) {
                let (a, b) = (a.max(lo), b.min(hi));
                let mut at = a;
                while at < b {
                    let off = (at - lo) as usize;
                    let src = &bytes[off..off + (b - at) as usize];
                    match self.uffd.copy(at, src) {
                        Fill::Done => {
                            copied += b - at;
                            at = b;
                        }
                        Fill::Exists { done } => {
                            copied += done;
                            at += done + u.page;
                        }
                        Fill::Failed { done, err } if done > 0 && is_eagain(&err) => {
                            // Stopped part way (the kernel's answer when a present page
                            // follows copied ones): go on from there; the next call says
                            // why it stopped.
                            copied += done;
                            at += done;
                        }
                        Fill::Failed { done, err } => {
                            copied += done;
                            if is_eagain(&err) && attempts < 1000 {
                                // The address space is changing (a discard in flight):
                                // read its events, then go over the runs again.
                                attempts += 1;
                                self.take_events();
                                continue 'again;
                            }
                            if err.raw_os_error() == Some(libc::ESRCH) {
                                self.gone.store(true, Ordering::Relaxed);
                                self.notify();
                            }
                            return Err(err);
                        }
                    }
                }
            }
            return Ok(copied);
        }
    }

    /// Reads waiting messages while a copy cannot proceed: discards are recorded at
    /// once (they are what the copy waits for), faults queued for the fault loop.
    fn take_events(&self) {
        let _ = self.uffd.poll(1);
        if let Ok(events) = self.uffd.read_events(BATCH) {
            for e in events {
                match e {
                    Event::Remove { start, end } | Event::Unmap { start, end } => {
                        lock(&self.removed).push((start, end));
                    }
                    e => lock(&self.queued).push_back(e),
                }
            }
        }
    }

    /// Poisons every page of the unit that is not present: a touch raises SIGBUS.
    fn poison_unit(&self, u: &Unit) {
        let (mut at, end) = (u.host, u.host + u.at.len);
        while at < end {
            match self.uffd.poison(at, end - at) {
                Fill::Done => {
                    self.poisoned_bytes.fetch_add(end - at, Ordering::Relaxed);
                    return;
                }
                Fill::Exists { done } => {
                    self.poisoned_bytes.fetch_add(done, Ordering::Relaxed);
                    at += done + u.page;
                }
                Fill::Failed { done, err } if done > 0 && is_eagain(&err) => {
                    // Stopped part way (a present page after poisoned ones): go on.
                    self.poisoned_bytes.fetch_add(done, Ordering::Relaxed);
                    at += done;
                }
                Fill::Failed { done, err } => {
                    self.poisoned_bytes.fetch_add(done, Ordering::Relaxed);
                    if err.raw_os_error() == Some(libc::ESRCH) {
                        self.gone.store(true, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }

    /// Poisons every data unit still pending (the restore is stopping before they
    /// were filled): a later touch raises SIGBUS instead of reading zeros.
    pub(super) fn poison_pending(&self) {
        for u in self.units.iter().filter(|u| u.is_data()) {
            let mut s = lock(&u.state);
            if *s == State::Pending {
                self.poison_unit(u);
                *s = State::Failed;
            }
        }
    }
}

/// EAGAIN: after some bytes, the kernel's way of saying a range operation stopped
/// part way (at a present page, say: the fill of a block whose pages faults served one
/// by one); with none, the address space is changing (a discard in flight).
fn is_eagain(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// A huge page of zeros copied (hugetlb has no UFFDIO_ZEROPAGE).
fn zeros_copy(uffd: &Uffd, addr: u64, page: u64) -> Fill {
    let zeros = vec![0u8; page as usize];
    uffd.copy(addr, &zeros)
}
