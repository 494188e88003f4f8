//! The parallel populate engine (docs/design.md §1, step 3).
//!
//! Each job (one backend's memory) is split into contiguous chunks of whole pages, at
//! least [`MIN_CHUNK`] each, one per thread. Every thread of every job is created before
//! any of them starts: creating a thread maps its stack, which takes the mmap lock for
//! writing and would stall the threads already faulting pages in. Then all run at once,
//! so several backends preallocate concurrently. Faults go through MADV_POPULATE_WRITE,
//! which returns an error where touching the memory would raise SIGBUS.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::limits::watch::{Edge, Watch};
use crate::sys::RawMapping;

/// Smallest chunk worth a thread of its own.
pub const MIN_CHUNK: u64 = 64 << 20;
/// Work between progress updates and cancellation checks.
const STEP: u64 = 16 << 20;

/// Shared progress of a populate run: bytes done, bytes planned, and a cancel switch
/// that another thread (a signal handler's thread, a QMP command) may flip.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
}

impl Progress {
    /// Nothing done, nothing planned, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes faulted in so far, over every job of every run using this progress.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes planned: each run adds the length of all its jobs' memory when it starts.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Asks every thread to stop after its current step (at most 16 MiB).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Adds `bytes` to the work planned (a remote rebind's pages, for instance).
    pub(crate) fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds `bytes` to the work done.
    pub(crate) fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether [`Progress::cancel`] was called. It is never reset, so every later run
    /// with this progress is cancelled too.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// How to fault in one job's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Method {
    /// MADV_POPULATE_WRITE (or _READ for read-only mappings).
    Populate {
        /// MADV_POPULATE_WRITE when true; MADV_POPULATE_READ for read-only mappings.
        write: bool,
    },
    /// Read and write back a byte per page: only for memory that cannot SIGBUS.
    Touch,
}

/// One region to preallocate.
#[derive(Debug)]
pub(crate) struct Job<'a> {
    pub map: &'a RawMapping,
    pub page_size: u64,
    pub threads: usize,
    /// CPUs the threads may run on (the bound or preferred nodes' CPUs); empty = any.
    pub cpus: Vec<usize>,
    pub method: Method,
    /// The batch's watched limits (`limits::watch`) and which of them this job's
    /// memory counts against; every step is granted first.
    pub watch: Option<&'a Watch>,
    pub limits: Vec<usize>,
    /// Offset and length of the part of `map` to fault in (a block range being
    /// plugged, `plug.rs`); None: all of it.
    pub part: Option<(u64, u64)>,
}

impl Job<'_> {
    /// Offset and length of what this job faults in.
    fn span(&self) -> (u64, u64) {
        self.part.unwrap_or((0, self.map.len() as u64))
    }
}

/// What a finished job did, for reports and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Bytes preallocated: the whole mapping of the job, or the part it was given.
    pub bytes: u64,
    /// Threads used: those asked for (`prealloc-threads`), fewer where each would get
    /// less than [`MIN_CHUNK`] bytes.
    pub threads: usize,
    /// Wall time from the release of all the run's threads to this job's last thread
    /// finishing.
    pub seconds: f64,
    /// The CPUs the threads were seen running on (sched_getcpu inside each thread).
    pub cpus_seen: Vec<usize>,
    /// When the job's first thread began faulting and its last one finished: jobs of
    /// one run overlap in time.
    pub began: Instant,
    /// When the job's last thread finished.
    pub ended: Instant,
}

impl Stats {
    /// Throughput in GiB (2^30 bytes) per second of `seconds`; 0 when no time was measured.
    pub fn gib_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / (1u64 << 30) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Why a job did not finish.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum Failure {
    /// The populate call failed at `offset` (EFAULT: no huge page or SIGBUS-class fault;
    /// ENOMEM: out of memory; EHWPOISON ...).
    Fault {
        /// Byte offset in the mapping where the failing call began (a call covers 16 MiB,
        /// or one page where pages are larger); the lowest over the job's threads.
        offset: u64,
        /// What madvise (or the page touch) returned.
        err: io::Error,
    },
    /// The run's [`Progress`] was cancelled; the job may be partly faulted in.
    Cancelled,
    /// Another job of the same run failed first, so this one was stopped.
    Aborted,
    /// The threads could not be created.
    Spawn(io::Error),
    /// The next step would have crossed a watched limit (another process took the
    /// memory meanwhile); every thread of the run was stopped.
    Edge(Edge),
}

impl Failure {
    /// Whether this failure explains a failed batch better than `other`: a fault or a
    /// spawn error over a cancel, a cancel over an abort (aborts follow from the others).
    pub(crate) fn explains_more_than(&self, other: &Failure) -> bool {
        fn rank(f: &Failure) -> u8 {
            match f {
                Failure::Aborted => 0,
                Failure::Cancelled => 1,
                Failure::Fault { .. } | Failure::Spawn(_) | Failure::Edge(_) => 2,
            }
        }
        rank(self) > rank(other)
    }
}

/// Threads a job of `len` bytes gets when `requested` are allowed.
pub fn plan_threads(len: u64, requested: usize) -> usize {
    let by_size = len.div_ceil(MIN_CHUNK).max(1) as usize;
    requested.clamp(1, by_size)
}

/// The page-aligned [start, end) of chunk `i` of `n` over `len` bytes.
fn chunk(len: u64, page: u64, n: usize, i: usize) -> (u64, u64) {
    let pages = len / page;
    let lo = pages * i as u64 / n as u64;
    let hi = pages * (i as u64 + 1) / n as u64;
    (lo * page, hi * page)
}

/// A gate all threads wait at until every thread exists.
struct Gate {
    state: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.unwrap_or(false)
    }

    fn open(&self, go: bool) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.cv.notify_all();
    }
}

/// Stores `value` in `slot` if the slot is empty or `better(value, current)`: the
/// earliest start, the latest finish, the lowest failing offset over a job's threads.
fn keep<T>(slot: &Mutex<Option<T>>, value: T, better: impl Fn(&T, &T) -> bool) {
    let mut cur = slot.lock().unwrap_or_else(|e| e.into_inner());
    if cur.as_ref().is_none_or(|c| better(&value, c)) {
        *cur = Some(value);
    }
}

/// Why a thread stopped early.
enum Stopped {
    Fault(u64, io::Error),
    Edge(Edge),
}

struct JobState {
    error: Mutex<Option<(u64, io::Error)>>,
    edge: Mutex<Option<Edge>>,
    finished_at: Mutex<Option<Instant>>,
    began_at: Mutex<Option<Instant>>,
    cpus_seen: Mutex<Vec<usize>>,
}

fn run_chunk(
    job: &Job<'_>,
    start: u64,
    end: u64,
    progress: &Progress,
    abort: &AtomicBool,
) -> Result<(), Stopped> {
    let step = STEP.max(job.page_size) / job.page_size * job.page_size;
    let mut off = start;
    while off < end {
        if progress.is_cancelled() || abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let len = step.min(end - off);
        if let Some(w) = job.watch {
            match w.grant(&job.limits, len) {
                Ok(()) => {}
                Err(Some(edge)) => return Err(Stopped::Edge(edge)),
                // Another thread's step crossed a limit: stop like on an abort.
                Err(None) => return Ok(()),
            }
        }
        let r = match job.method {
            Method::Populate { write } => job.map.populate(off as usize, len as usize, write),
            Method::Touch => {
                job.map
                    .touch_pages(off as usize, len as usize, job.page_size as usize)
            }
        };
        if let Some(w) = job.watch {
            w.finish(&job.limits, len);
        }
        r.map_err(|e| Stopped::Fault(off, e))?;
        off += len;
        progress.done.fetch_add(len, Ordering::Relaxed);
    }
    Ok(())
}

/// Preallocates every job at once. Any fault stops all jobs (a batch of backends is
/// created or undone as a whole); results come back in job order.
pub(crate) fn populate(jobs: &[Job<'_>], progress: &Progress) -> Vec<Result<Stats, Failure>> {
    let total: u64 = jobs.iter().map(|j| j.span().1).sum();
    progress.total.fetch_add(total, Ordering::Relaxed);
    let gate = Gate {
        state: Mutex::new(None),
        cv: Condvar::new(),
    };
    let abort = AtomicBool::new(false);
    let states: Vec<JobState> = jobs
        .iter()
        .map(|_| JobState {
            error: Mutex::new(None),
            edge: Mutex::new(None),
            finished_at: Mutex::new(None),
            began_at: Mutex::new(None),
            cpus_seen: Mutex::new(Vec::new()),
        })
        .collect();
    let plans: Vec<usize> = jobs
        .iter()
        .map(|j| plan_threads(j.span().1, j.threads))
        .collect();
    let mut started = Instant::now();
    let spawn_error = std::thread::scope(|s| {
        let mut spawn_error = None;
        let mut handles = Vec::new();
        'spawn: for (ji, job) in jobs.iter().enumerate() {
            let n = plans[ji];
            for i in 0..n {
                let (base, len) = job.span();
                let (start, end) = chunk(len, job.page_size, n, i);
                let (start, end) = (base + start, base + end);
                let (gate, abort, st) = (&gate, &abort, &states[ji]);
                let spawned = std::thread::Builder::new()
                    .name(format!("prealloc-{ji}.{i}"))
                    .stack_size(64 << 10)
                    .spawn_scoped(s, move || {
                        if !gate.wait() {
                            return;
                        }
                        if !job.cpus.is_empty() {
                            // Placement is a speed hint: a refused pin still preallocates.
                            let _ = crate::sys::pin_current_thread(&job.cpus);
                        }
                        let cpu_start = crate::sys::current_cpu();
                        keep(&st.began_at, Instant::now(), |new, old| new < old);
                        let r = run_chunk(job, start, end, progress, abort);
                        let cpu_end = crate::sys::current_cpu();
                        {
                            let mut seen = st.cpus_seen.lock().unwrap_or_else(|e| e.into_inner());
                            seen.extend(cpu_start.into_iter().chain(cpu_end));
                        }
                        match r {
                            Err(Stopped::Fault(off, e)) => {
                                abort.store(true, Ordering::Relaxed);
                                keep(&st.error, (off, e), |new, old| new.0 < old.0);
                            }
                            Err(Stopped::Edge(edge)) => {
                                abort.store(true, Ordering::Relaxed);
                                keep(&st.edge, edge, |_, _| false);
                            }
                            Ok(()) => {}
                        }
                        keep(&st.finished_at, Instant::now(), |new, old| new > old);
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        spawn_error = Some(e);
                        break 'spawn;
                    }
                }
            }
        }
        started = Instant::now();
        gate.open(spawn_error.is_none());
        // Joined, not only waited for (the scope alone waits for the closures, not the
        // threads): a thread still exiting after populate returns would make the next
        // preallocation map a new stack and malloc arena, so a process that adds and
        // deletes backends would slowly grow. A panic in a thread is reported by the
        // scope as before.
        let panicked = handles.into_iter().any(|h| h.join().is_err());
        assert!(!panicked, "a preallocation thread panicked");
        spawn_error
    });
    let mut out = Vec::with_capacity(jobs.len());
    let aborted = abort.load(Ordering::Relaxed);
    let spawn_failed = spawn_error.is_some();
    let mut spawn_error = spawn_error;
    for (ji, (job, st)) in jobs.iter().zip(states).enumerate() {
        if spawn_failed {
            out.push(Err(spawn_error
                .take()
                .map_or(Failure::Aborted, Failure::Spawn)));
            continue;
        }
        if let Some((offset, err)) = st.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            out.push(Err(Failure::Fault { offset, err }));
        } else if let Some(edge) = st.edge.into_inner().unwrap_or_else(|e| e.into_inner()) {
            out.push(Err(Failure::Edge(edge)));
        } else if progress.is_cancelled() {
            out.push(Err(Failure::Cancelled));
        } else if aborted {
            out.push(Err(Failure::Aborted));
        } else {
            let fin = st
                .finished_at
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            let seconds = fin
                .map_or(Duration::ZERO, |f| f.saturating_duration_since(started))
                .as_secs_f64();
            let began = st
                .began_at
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(started);
            let ended = fin.unwrap_or(began);
            let mut cpus_seen = st.cpus_seen.into_inner().unwrap_or_else(|e| e.into_inner());
            cpus_seen.sort_unstable();
            cpus_seen.dedup();
            out.push(Ok(Stats {
                bytes: job.span().1,
                threads: plans[ji],
                seconds,
                cpus_seen,
                began,
                ended,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_whole_pages_without_gaps() {
        let page = 2 << 20;
        let len = 1000 * page;
        let n = 7;
        let mut prev = 0;
        for i in 0..n {
            let (a, b) = chunk(len, page, n, i);
            assert_eq!(a, prev);
            assert_eq!(a % page, 0);
            prev = b;
        }
        assert_eq!(prev, len);
    }

    /// smaps `Rss` of the mapping that starts at `addr`, read here from the kernel.
    fn rss_of_mapping_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// The fallback of kernels without MADV_POPULATE_WRITE never runs on a host that
    /// has it: forced here, it must fault in every page, on every thread's chunk.
    #[test]
    fn touching_faults_in_every_page_of_private_memory() {
        let len = 40 << 20;
        let map = RawMapping::map(len, None, 0, Default::default()).unwrap();
        assert_eq!(rss_of_mapping_at(map.addr()), 0);
        let job = Job {
            map: &map,
            page_size: crate::sys::page_size() as u64,
            threads: 3,
            cpus: Vec::new(),
            method: Method::Touch,
            watch: None,
            limits: Vec::new(),
            part: None,
        };
        let progress = Progress::new();
        let stats = populate(std::slice::from_ref(&job), &progress)
            .pop()
            .unwrap();
        assert!(stats.is_ok(), "{stats:?}");
        assert_eq!(rss_of_mapping_at(map.addr()), len as u64, "smaps Rss");
        assert_eq!(progress.done(), len as u64);
    }

    /// Which kinds may fall back to touching: private anonymous memory only, whose
    /// faults fail by OOM and never by SIGBUS.
    #[test]
    fn only_private_ram_falls_back_to_touching() {
        use crate::kind::{Kind, KindConfig};
        use crate::props::{Common, MachineDefaults};
        let machine = MachineDefaults::default();
        for kind in Kind::ALL.iter().copied() {
            let cfg = KindConfig::defaults(kind, &machine);
            for share in [false, true] {
                let common = Common {
                    share,
                    ..Common::defaults(kind.shares_by_default(), &machine)
                };
                let fallback = cfg.ops().prealloc_method(&common, false);
                let want = (kind == Kind::Ram && !share).then_some(Method::Touch);
                assert_eq!(fallback, want, "{kind} share={share}");
                let normal = cfg.ops().prealloc_method(&common, true);
                assert_eq!(normal, Some(Method::Populate { write: true }), "{kind}");
            }
        }
    }

    #[test]
    fn at_least_64_mib_per_thread_and_no_fixed_cap() {
        assert_eq!(plan_threads(64 << 20, 8), 1);
        assert_eq!(plan_threads((64 << 20) + 1, 8), 2);
        assert_eq!(plan_threads(1 << 40, 64), 64);
        assert_eq!(plan_threads(4096, 0), 1);
    }
}
