//! The kernel doing the same work as hostmem, without hostmem: the baselines the
//! snapshot and plug figures are ratios of. No unsafe code here either: I/O straight
//! into and out of a backend's mapping goes through vm-memory's volatile slices
//! (`read(2)`/`write(2)` on the mapped address, as a VMM does), a hole is punched with
//! rustix's `fallocate`, and MADV_DONTNEED of private anonymous memory — which no safe
//! Rust API offers — is timed inside a Python process on its own mapping
//! (`mmap.madvise`), the same call on the same kind and amount of memory.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hostmem::snapshot::{BlockKind, Image};
use hostmem::vm_memory::{Bytes, GuestAddress};
use hostmem::vmm::{guest_memory, Memory, RegionSpec};
use hostmem::{Backend, InUse};
use rustix::fs::{fallocate, FallocateFlags};
use rustix::time::{clock_gettime, ClockId};

use crate::pattern::RUN;

/// The whole of `b` as vm-memory guest memory at address 0 (the bench's way to hand a
/// mapping to `read(2)`/`write(2)` without unsafe code).
pub fn guest(b: &Backend) -> Result<Memory, String> {
    guest_memory::<()>(&[RegionSpec::whole(b, GuestAddress(0))]).map_err(|e| e.to_string())
}

/// Seconds a plain sequential write of `runs` (2 MiB each) of `mem` to a new file at
/// `path` takes: one thread, `write(2)` from the mapping, in order, no fsync (as the
/// save, which does not sync by default).
pub fn plain_write(mem: &Memory, runs: &[u64], path: &Path) -> Result<f64, String> {
    let start = Instant::now();
    let mut f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for &r in runs {
        mem.write_all_volatile_to(GuestAddress(r * RUN), &mut f, RUN as usize)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds `threads` threads take to read every data block of `image` into `mem` (a
/// fresh mapping of the same kind) with `read(2)` straight into the mapping, each
/// thread taking the next block: what a copy restore costs without checksums or a
/// bounce buffer. Holes are left alone, as the restore leaves them.
pub fn parallel_read(image: &Image, mem: &Memory, threads: usize) -> Result<f64, String> {
    let h = image.header();
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    let mut f = File::open(image.path()).map_err(|e| e.to_string())?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = h.block(i) else { return Ok(()) };
                        if !matches!(image.blocks()[i as usize], BlockKind::Data { .. }) {
                            continue;
                        }
                        f.seek(SeekFrom::Start(b.file_offset))
                            .map_err(|e| e.to_string())?;
                        mem.read_exact_volatile_from(
                            GuestAddress(b.backend_offset),
                            &mut f,
                            b.len as usize,
                        )
                        .map_err(|e| format!("block {i}: {e}"))?;
                    }
                })
            })
            .collect();
        crate::pattern::join_all(workers, "reader")
    })?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds one thread takes to copy the whole image, holes included (they read as
/// zeros and are written as zeros), into `mem`: the copy-everything restore.
pub fn whole_copy(image: &Image, mem: &Memory) -> Result<f64, String> {
    const STEP: u64 = 16 << 20;
    let start = Instant::now();
    let mut f = File::open(image.path()).map_err(|e| e.to_string())?;
    for r in &image.header().regions {
        f.seek(SeekFrom::Start(r.file_offset))
            .map_err(|e| e.to_string())?;
        let mut off = 0;
        while off < r.len {
            let n = STEP.min(r.len - off);
            mem.read_exact_volatile_from(GuestAddress(r.backend_offset + off), &mut f, n as usize)
                .map_err(|e| format!("copy at {off:#x}: {e}"))?;
            off += n;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// This thread's CPU time in seconds: on a host where other work preempts the bench,
/// what a single-threaded call itself cost.
pub fn thread_cpu() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The whole process's CPU time in seconds (every thread's, user and system): what a
/// multi-threaded call cost, less sensitive than its wall time to other work on the
/// host taking the CPUs.
pub fn process_cpu() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Seconds (wall, and this thread's CPU) the kernel takes to punch a hole over all of
/// `mem`'s file (memfd, shmem or hugetlbfs): `fallocate(PUNCH_HOLE|KEEP_SIZE)`, what an
/// unplug of such memory does.
pub fn punch_hole(mem: &InUse) -> Result<(f64, f64), String> {
    let (fd, off) = mem.fd().ok_or("the memory has no file to punch")?;
    let (start, cpu) = (Instant::now(), thread_cpu());
    fallocate(
        fd.as_fd(),
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        mem.len() as u64,
    )
    .map_err(|e| format!("fallocate(PUNCH_HOLE): {e}"))?;
    Ok((start.elapsed().as_secs_f64(), thread_cpu() - cpu))
}

/// MADV_DONTNEED of `len` bytes of private anonymous memory, with THP advised or not,
/// timed in a Python process around the one `madvise` call on its own mapping,
/// populated first (MADV_POPULATE_WRITE); its resident bytes from its own
/// smaps_rollup before and after.
const DONTNEED_PY: &str = r#"
import json, mmap, sys, time
size, thp = int(sys.argv[1]), sys.argv[2] == "thp"
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_HUGEPAGE if thp else mmap.MADV_NOHUGEPAGE)
m.madvise(23)  # MADV_POPULATE_WRITE
def rss():
    for l in open("/proc/self/smaps_rollup"):
        if l.startswith("Rss:"):
            return int(l.split()[1]) * 1024
before = rss()
c, t = time.thread_time(), time.perf_counter()
m.madvise(mmap.MADV_DONTNEED)
t, c = time.perf_counter() - t, time.thread_time() - c
print(json.dumps({"secs": t, "cpu": c, "rss_before": before, "rss_after": rss()}))
"#;

/// What the kernel's own MADV_DONTNEED did: seconds, and the helper's resident bytes
/// before and after.
pub struct Dontneed {
    pub secs: f64,
    /// The thread's CPU time in the call (what it costs apart from preemption).
    pub cpu: f64,
    pub rss_before: u64,
    pub rss_after: u64,
}

pub fn dontneed(len: u64, thp: bool) -> Result<Dontneed, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            DONTNEED_PY,
            &len.to_string(),
            if thp { "thp" } else { "4k" },
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the MADV_DONTNEED helper failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the MADV_DONTNEED helper's answer: {e}"))?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(Dontneed {
        secs: num("secs"),
        cpu: num("cpu"),
        rss_before: num("rss_before") as u64,
        rss_after: num("rss_after") as u64,
    })
}
