//! The library in this process: a backend made from the same `-object` text the
//! processes get, and memset over its memory with the same threads, the ceiling any
//! page-zeroing preallocation can reach.

use std::sync::Barrier;
use std::time::Instant;

use hostmem::{Backend, InUse, MachineDefaults, ObjectSpec, Progress};

use crate::stats::GIB;

/// A live backend from one `-object` text, preallocated under `progress` (Ctrl-C
/// cancels it).
pub fn make_backend(spec: &str, progress: &Progress) -> Result<Backend, String> {
    let mut b = ObjectSpec::parse(spec)
        .and_then(|s| s.to_backend(&MachineDefaults::default()))
        .map_err(|e| e.to_string())?;
    b.complete_with(progress).map_err(|e| e.to_string())?;
    Ok(b)
}

/// [start, end) of part `i` of `n` of `len` bytes, on `page` boundaries.
fn part(len: usize, page: usize, n: usize, i: usize) -> (usize, usize) {
    let pages = len / page;
    (pages * i / n * page, pages * (i + 1) / n * page)
}

/// memset bandwidth over memory already faulted in, split across `threads` threads that
/// start together: the ceiling for zeroing pages with the same threads.
pub fn memset_gibs(mem: &InUse, threads: usize) -> Result<f64, String> {
    let (len, page) = (mem.len(), mem.page_size() as usize);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (a, b) = part(len, page, threads, i);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    mem.fill(a, b - a, 0x5a)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for w in workers {
            w.join()
                .map_err(|_| "memset thread panicked".to_string())?
                .map_err(|e| format!("memset: {e}"))?;
        }
        Ok(len as f64 / GIB / start.elapsed().as_secs_f64())
    })
}

/// Milliseconds one call of `f` takes.
pub fn time_ms<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_on_page_boundaries() {
        let (len, page) = (10 * 4096, 4096);
        assert_eq!(part(len, page, 3, 0), (0, 3 * 4096));
        assert_eq!(part(len, page, 3, 2).1, len);
    }
}
