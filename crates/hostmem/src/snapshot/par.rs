//! Blocks shared out to threads: each thread takes the next unclaimed block, so a slow
//! block (a fault, a cold page cache) does not hold up a fixed stripe, and the first
//! failure stops every thread after its current block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Result, SnapshotError};
use crate::Progress;

/// Runs `work(index, buffer)` for every block in `0..blocks` on up to `threads`
/// threads, each with its own `buf_len`-byte buffer; returns each block's result in
/// order. `bytes(index)` is what a block adds to the progress. Threads run on `cpus`
/// when it is not empty (a restore's on the nodes its memory goes to, as prealloc's). On
/// failure, the error of the lowest failed block, among those that ran.
pub(crate) fn run<T, W, B>(
    blocks: u64,
    threads: usize,
    cpus: &[usize],
    buf_len: usize,
    progress: &Progress,
    bytes: B,
    work: W,
) -> Result<Vec<T>>
where
    T: Send,
    W: Fn(u64, &mut [u8]) -> Result<T> + Sync,
    B: Fn(u64) -> u64 + Sync,
{
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<(u64, SnapshotError)>> = Mutex::new(None);
    let threads = threads.clamp(1, blocks.max(1) as usize);
    let mut done: Vec<Vec<(u64, T)>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    if !cpus.is_empty() {
                        // Placement is a speed hint: a refused pin still runs.
                        let _ = crate::sys::pin_current_thread(cpus);
                    }
                    let mut buf = vec![0u8; buf_len];
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        if progress.is_cancelled() {
                            keep(&failed, u64::MAX, SnapshotError::Cancelled);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= blocks {
                            break;
                        }
                        match work(i, &mut buf) {
                            Ok(t) => {
                                progress.add_done(bytes(i));
                                mine.push((i, t));
                            }
                            Err(e) => {
                                keep(&failed, i, e);
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            // A worker panics only on a bug; its blocks are then missing and the check
            // below reports that instead of passing the panic on.
            if let Ok(v) = h.join() {
                done.push(v);
            }
        }
    });
    if let Some((_, e)) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut all: Vec<(u64, T)> = done.into_iter().flatten().collect();
    if all.len() as u64 != blocks {
        return Err(SnapshotError::Mismatch(format!(
            "{} of {blocks} blocks were done",
            all.len()
        )));
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

fn keep(slot: &Mutex<Option<(u64, SnapshotError)>>, index: u64, e: SnapshotError) {
    let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
    if g.as_ref().is_none_or(|(i, _)| index < *i) {
        *g = Some((index, e));
    }
}

/// Threads for `len` bytes when the caller asked for `requested` (0 = one per CPU):
/// prealloc's rule, at least 64 MiB a thread.
pub(crate) fn threads_for(len: u64, requested: usize) -> usize {
    let requested = if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    };
    crate::prealloc::plan_threads(len, requested)
}
