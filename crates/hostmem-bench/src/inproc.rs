//! The library in this process: a backend made from the same `-object` text the
//! processes get, and memset with the same threads over memory already faulted in, the
//! ceiling any page-zeroing preallocation can reach.

use std::sync::Barrier;
use std::time::Instant;

use hostmem::{Backend, MachineDefaults, ObjectSpec, Progress};

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

/// The memset reference: GiB/s of plain `memset` (`slice::fill`) over `len` bytes of
/// this process's memory already faulted in, by `threads` threads at once: the ceiling
/// for zeroing pages with those threads.
///
/// Not the backend's own memory: the library's `InUse::fill` writes volatile 8-byte
/// words (a guest may share the memory), several times slower than memset, and the
/// bench has no unsafe code to memset a mapping itself. So a buffer of the same size is
/// allocated, faulted in by a first fill (untimed), timed on a second, and freed before
/// the report is timed (`/proc/self/smaps` would walk its page tables too). It has
/// 4 KiB pages (THP is `madvise` here and nothing advises it); streaming stores lose
/// little to that.
pub fn memset_gibs(len: usize, threads: usize) -> Result<f64, String> {
    let mut buf = vec![0u8; len];
    fill_parallel(&mut buf, threads, 0xa5)?;
    let secs = fill_parallel(&mut buf, threads, 0x5a)?;
    Ok(len as f64 / GIB / secs)
}

/// Seconds `threads` threads take to fill `buf`, one contiguous part each, from the
/// first one's start to the last one's end (each thread reads the clock itself: the
/// caller's thread may not run again until a worker is done, on a host with as many
/// CPUs as workers).
fn fill_parallel(buf: &mut [u8], threads: usize, byte: u8) -> Result<f64, String> {
    let threads = threads.max(1);
    let part = buf.len().div_ceil(threads).max(1);
    let barrier = Barrier::new(buf.chunks(part).len());
    let spans = std::thread::scope(|s| {
        let workers: Vec<_> = buf
            .chunks_mut(part)
            .map(|chunk| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    chunk.fill(byte);
                    std::hint::black_box(chunk);
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| "memset thread panicked".to_string()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let first = spans.iter().map(|s| s.0).min();
    let last = spans.iter().map(|s| s.1).max();
    Ok(first
        .zip(last)
        .map_or(0.0, |(a, b)| b.duration_since(a).as_secs_f64()))
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
    fn memset_fills_every_byte_with_any_thread_count() {
        for threads in [1, 3, 8] {
            let mut buf = vec![0u8; 5];
            fill_parallel(&mut buf, threads, 7).unwrap();
            assert_eq!(buf, [7; 5]);
        }
        let mut empty: [u8; 0] = [];
        assert_eq!(fill_parallel(&mut empty, 2, 1).unwrap(), 0.0);
        assert!(memset_gibs(1 << 20, 2).unwrap() > 0.0);
    }
}
