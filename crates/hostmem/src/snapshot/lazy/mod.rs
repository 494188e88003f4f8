//! Lazy restore (userfaultfd): memory usable at once, each page served from the image
//! on first touch, the rest filled in the background — in the order the last run
//! touched blocks when that order was recorded, else in address order.
//!
//! - [`serve`]: the engine, on a userfaultfd whose ranges are registered already (ours,
//!   or another process's: Firecracker sends its uffd and regions, `crate::fc`).
//! - [`restore_lazy`]: a hostmem [`Backend`](crate::Backend) restored in this process:
//!   checked against its limits like a copy restore, registered, served;
//!   [`restore_lazy_chain`]: the same from a full image and the diffs on it
//!   (`chainread.rs`).
//!
//! What a toucher sees (`docs/snapshot.md`): the image's bytes, checked against the
//! block's checksum before any of them reach memory; zeros for a hole; for a page that
//! cannot be served (checksum mismatch, short read, I/O error) SIGBUS (the page is
//! poisoned with UFFDIO_POISON), never a hang and never wrong bytes, and the error —
//! naming the block, its backend offset and page, and the cause — in
//! [`LazyServer::progress`] and [`LazyServer::wait`] at once.

mod chainread;
mod chunks;
mod engine;
mod local;
mod order;
mod plan;
mod sidecar;
mod threads;

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::image::Image;
use super::{Result, SnapshotError};
use crate::sys::uffd::Uffd;
use crate::sys::CpuShare;
use engine::Shared;

pub(crate) use chunks::sums_of;
pub use chunks::{chunks_path, ChunkSums, CHUNK};
pub use local::{restore_lazy, restore_lazy_chain};
pub use order::{load_order, order_path, save_order};

/// A range of an address space registered with a userfaultfd (ours or another
/// process's: Firecracker registers its own guest memory and sends us the uffd) whose
/// bytes are the image's backend bytes `[backend_offset, backend_offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyRegion {
    /// Start address in the uffd's address space.
    pub host_addr: u64,
    /// Bytes (whole pages).
    pub len: u64,
    /// Where the range is in the image's backend.
    pub backend_offset: u64,
    /// The memory's page size there (4096; 2 MiB for hugetlb): the unit UFFDIO_COPY
    /// and zero pages are made in.
    pub page_size: u64,
}

/// How to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyOptions {
    /// Threads reading faults (at least 1).
    pub fault_threads: usize,
    /// Fill the pages nobody touched in the background (off: only faults are served).
    pub background: bool,
    /// Threads of the background fill (at least 1 when `background`).
    pub fill_threads: usize,
    /// Block indices to fill first, in this order ([`load_order`] of an earlier run's
    /// record); the rest follow in address order.
    pub fill_order: Vec<u64>,
    /// Keep the order in which faults first touched blocks ([`LazyReport::touched`]),
    /// to [`save_order`] for the next restore.
    pub record_order: bool,
    /// CPUs the serving threads run on (empty: any): those of the nodes the memory is
    /// bound to, so the copies are node-local.
    pub cpus: Vec<usize>,
    /// Chunk checksums ([`ChunkSums::load`] of the `FILE.chunks` that `save` wrote or
    /// an earlier run learned): a fault then reads and checks one chunk of a block (a
    /// 4 KiB page as `save` writes them) instead of the whole block. None: the
    /// `FILE.chunks` beside the image is loaded when it is there and belongs to this
    /// image (any other is left out: whole blocks are served, checked as ever).
    pub chunk_sums: Option<Arc<ChunkSums>>,
    /// How the fill's threads share the CPUs with the fault threads and the guest.
    pub fill_priority: FillPriority,
}

/// How the background fill's threads compete for the CPUs. A first touch waits for a
/// fault thread to run; beside a fill thread at the same priority on a busy host, a
/// waking fault thread may wait for a time slice: that was the tail of the first-touch
/// latency (4 KiB first touch p99, median of 11–12 runs at 2 GiB on 2 loaded CPUs:
/// 1.95 ms at normal priority, 68 µs at SCHED_IDLE; `docs/bench.md`). A fill that gets
/// no CPU at its priority is not left to starve: a fault thread with no message and no
/// fill progress for 20 ms fills in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FillPriority {
    /// SCHED_IDLE: the fill runs on CPU time no other thread wants, and a waking fault
    /// thread (or vCPU) preempts it at once.
    #[default]
    Idle,
    /// Nice 19: the least share a normal thread gets.
    Low,
    /// As the threads that start the restore.
    Normal,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            fault_threads: 1,
            background: true,
            fill_threads: 1,
            fill_order: Vec::new(),
            record_order: true,
            cpus: Vec::new(),
            chunk_sums: None,
            fill_priority: FillPriority::default(),
        }
    }
}

/// Where a lazy restore is.
#[derive(Debug, Clone, PartialEq)]
pub struct LazyProgress {
    /// Bytes of data blocks in the served ranges.
    pub bytes_total: u64,
    /// Of those, bytes copied into memory so far (by faults and the background fill).
    pub bytes_filled: u64,
    /// Page faults read.
    pub faults: u64,
    /// Of those, answered with zeros (holes, memory the image does not cover, pages
    /// discarded after they were filled).
    pub zero_faults: u64,
    /// Bytes poisoned (a touch raises SIGBUS): blocks that could not be served.
    pub poisoned_bytes: u64,
    /// Every error so far, in words (block, backend offset, page, cause).
    pub errors: Vec<String>,
    /// Every data block is in memory (or poisoned).
    pub filled: bool,
    /// The uffd's address space went away (the VM exited).
    pub gone: bool,
    /// Seconds since serving began.
    pub secs: f64,
}

/// What a lazy restore did, when it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LazyReport {
    /// The counters at the end.
    pub progress: LazyProgress,
    /// Seconds from serving to the last data block filled, if it was.
    pub filled_secs: Option<f64>,
    /// Block indices in the order faults first touched them (with `record_order`).
    pub touched: Vec<u64>,
    /// The chunk checksums given, with those of every block verified whole in this
    /// run (with `record_order`): to [`ChunkSums::save`] for the next restore.
    pub chunk_sums: ChunkSums,
}

/// A running lazy restore: threads serving the uffd's faults and filling in the
/// background. [`wait`](LazyServer::wait) or [`stop`](LazyServer::stop) ends it;
/// dropping it stops it as `stop` does.
pub struct LazyServer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Keeps memory of ours mapped while it is served ([`restore_lazy`]).
    _hold: Option<crate::InUse>,
}

/// Serves faults on `uffd` from `image` until every page is filled (background) or the
/// server is stopped / the uffd's address space goes away. The uffd must already have
/// the regions registered (UFFDIO_REGISTER MISSING, plus MINOR where used; a minor
/// fault is answered with UFFDIO_CONTINUE: the page cache already has the page), and
/// should have UFFD_FEATURE_EVENT_REMOVE so a discarded page reads as zeros instead of
/// being filled again. Every region's memory must be missing (nothing present): a
/// present page is left as it is.
pub fn serve(
    image: Arc<Image>,
    uffd: OwnedFd,
    regions: Vec<LazyRegion>,
    opts: LazyOptions,
) -> Result<LazyServer> {
    let uffd = Uffd::from_fd(uffd).map_err(|source| SnapshotError::Io {
        what: "making the userfaultfd non-blocking for",
        path: image.path().to_path_buf(),
        source,
    })?;
    start(vec![image], uffd, regions, opts, None)
}

/// What one serving thread does, with its own block buffer.
type Job = Box<dyn FnOnce(&Shared, &mut Vec<u8>) + Send>;

/// Serves `chain` (a full image, then the diffs on it, newest last; checked by the
/// caller as a chain): `chain[0]` alone is a lone image's restore.
fn start(
    chain: Vec<Arc<Image>>,
    uffd: Uffd,
    regions: Vec<LazyRegion>,
    opts: LazyOptions,
    hold: Option<crate::InUse>,
) -> Result<LazyServer> {
    let refs: Vec<&Image> = chain.iter().map(|im| &**im).collect();
    let units = plan::units(&refs, &regions)?;
    start_units(chain, units, uffd, regions, opts, hold)
}

/// [`start`] with the units planned (`plan::units` of the chain over the regions).
fn start_units(
    chain: Vec<Arc<Image>>,
    units: Vec<engine::Unit>,
    uffd: Uffd,
    regions: Vec<LazyRegion>,
    opts: LazyOptions,
    hold: Option<crate::InUse>,
) -> Result<LazyServer> {
    let Some(image) = chain.first().cloned() else {
        return Err(SnapshotError::Mismatch("an empty chain of images".into()));
    };
    // The touch order and the chunk sums learned are kept for a lone image only: the
    // caller saves them beside the one image restored (`save_order`, `ChunkSums::save`),
    // and a chain's are neither the full image's (a guest restored from the chain
    // touches what its diffs left, and a unit a diff touches has no sums of the full
    // image) nor any one diff's.
    let record = opts.record_order && chain.len() == 1;
    let extra: usize = chain[1..].iter().map(|im| im.header().buffer_len()).sum();
    let order = if opts.background {
        plan::fill_order(&units, &opts.fill_order)
    } else {
        Vec::new()
    };
    // Chunk sums not given are read from beside the image by a thread of the server,
    // after the memory is usable (16 MiB for 8 GiB: 9–15 ms here); faults meanwhile
    // serve whole blocks.
    let beside = chunks_path(image.path());
    let load_sums = opts.chunk_sums.is_none() && beside.exists();
    let shared = Arc::new(Shared::new(
        chain, image, uffd, regions, units, record, order,
    ));
    if let Some(sums) = opts.chunk_sums.clone() {
        let _ = shared.chunk_sums.set(sums);
    }
    let buf_len = shared.image.header().buffer_len() + extra;
    let mut threads = Vec::new();
    let spawn = |name: String, share: Option<CpuShare>, f: Job| {
        let s = Arc::clone(&shared);
        let cpus = opts.cpus.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            if !cpus.is_empty() {
                // Placement is a speed hint: a refused pin still serves.
                let _ = crate::sys::pin_current_thread(&cpus);
            }
            if let Some(share) = share {
                // So is the share: a refused one still fills.
                let _ = crate::sys::set_current_thread_share(share);
            }
            let mut buf = Vec::with_capacity(buf_len);
            f(&s, &mut buf)
        })
    };
    let spawned = |e: std::io::Error| SnapshotError::Io {
        what: "starting a serving thread for",
        path: shared.image.path().to_path_buf(),
        source: e,
    };
    for t in 0..opts.fault_threads.max(1) {
        let h = spawn(
            format!("hostmem-uffd{t}"),
            None,
            Box::new(|s, b| s.serve_faults(b)),
        );
        threads.push(h.map_err(spawned)?);
    }
    let fill_share = match opts.fill_priority {
        FillPriority::Idle => Some(CpuShare::Idle),
        FillPriority::Low => Some(CpuShare::Nice(19)),
        FillPriority::Normal => None,
    };
    if load_sums {
        let load: Job = Box::new(move |s, _| {
            // Sums that cannot be read leave faults serving whole blocks, as without.
            if let Ok(sums) = ChunkSums::load(&beside, &s.image) {
                let _ = s.chunk_sums.set(Arc::new(sums));
            }
        });
        threads.push(spawn("hostmem-sums".into(), None, load).map_err(spawned)?);
    }
    if opts.background {
        for t in 0..opts.fill_threads.max(1) {
            let h = spawn(
                format!("hostmem-fill{t}"),
                fill_share,
                Box::new(|s, b| s.fill(b)),
            );
            threads.push(h.map_err(spawned)?);
        }
    }
    Ok(LazyServer {
        shared,
        threads,
        _hold: hold,
    })
}

impl LazyServer {
    /// The counters now; errors appear here as soon as a block fails.
    pub fn progress(&self) -> LazyProgress {
        let s = &self.shared;
        LazyProgress {
            bytes_total: s.bytes_total,
            bytes_filled: s.bytes_filled.load(Ordering::Relaxed),
            faults: s.faults.load(Ordering::Relaxed),
            zero_faults: s.zero_faults.load(Ordering::Relaxed),
            poisoned_bytes: s.poisoned_bytes.load(Ordering::Relaxed),
            errors: engine_errors(s),
            filled: s.filled(),
            gone: s.gone.load(Ordering::Relaxed),
            secs: s.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits up to `timeout` for every data block to be filled, an error, or the
    /// address space to go; true when one of them happened.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        let ended = || {
            s.filled()
                || s.error_count.load(Ordering::Acquire) > 0
                || s.gone.load(Ordering::Relaxed)
        };
        let g = s.changed_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_g, r) = s
            .changed
            .wait_timeout_while(g, timeout, |_| !ended())
            .unwrap_or_else(|e| e.into_inner());
        !r.timed_out() || ended()
    }

    /// Until every page is filled (then the threads end), or the first error: then the
    /// restore ends as [`stop`](LazyServer::stop) ends it (pages not filled are
    /// poisoned) and the error is returned. Needs the background fill (without it,
    /// only `stop` ends a restore).
    pub fn wait(self) -> Result<LazyReport> {
        while !self.wait_timeout(Duration::from_secs(3600)) {}
        self.end()
    }

    /// Stops serving now. Data pages not filled yet are poisoned first (a later touch
    /// raises SIGBUS: with nobody serving, it would otherwise hang, or read zeros once
    /// the uffd is closed); holes read as zeros either way. Returns the first error, if
    /// any block failed.
    pub fn stop(self) -> Result<LazyReport> {
        self.end()
    }

    fn end(mut self) -> Result<LazyReport> {
        let s = Arc::clone(&self.shared);
        s.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !s.gone.load(Ordering::Relaxed) {
            s.poison_pending();
        }
        let report = LazyReport {
            progress: self.progress(),
            filled_secs: *s.filled_secs.lock().unwrap_or_else(|e| e.into_inner()),
            touched: s.touched.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            chunk_sums: learned_sums(&s),
        };
        let mut errors = s.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
        Ok(report)
    }
}

impl Drop for LazyServer {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !self.shared.gone.load(Ordering::Relaxed) {
            self.shared.poison_pending();
        }
    }
}

fn learned_sums(s: &Shared) -> ChunkSums {
    let mut all = s
        .chunk_sums
        .get()
        .map(|c| (**c).clone())
        .unwrap_or_default();
    all.chunk = s.chunk();
    let learned = s.learned.lock().unwrap_or_else(|e| e.into_inner());
    // Sums learned before the sidecar arrived at another chunk size are left out.
    all.blocks.extend(
        learned
            .iter()
            .filter(|(_, (chunk, _))| *chunk == all.chunk)
            .map(|(b, (_, sums))| (*b, sums.clone())),
    );
    all
}

fn engine_errors(s: &Shared) -> Vec<String> {
    s.errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VMM hands the server to another thread (a handler per VM, a watcher).
    #[test]
    fn the_server_and_its_reports_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LazyServer>();
        send_sync::<LazyReport>();
        send_sync::<LazyOptions>();
    }
}
