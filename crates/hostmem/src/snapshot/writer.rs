//! One thread writes a save's image while the others copy and hash.
//!
//! Why one: a buffered write takes the file's inode lock, so writes into one image run
//! one at a time however many threads issue them — with every save thread writing, the
//! threads spent their time spinning on that lock (13 % of a 4 GiB save's CPU in a
//! profile here) and the save ran at 0.37–0.7× a plain sequential write. With one
//! writer, the write goes on without a pause while the other threads fill the next
//! buffers, and the save runs at the rate of the write it cannot avoid.
//!
//! The buffers are a fixed pool: a copying thread waits for one when the writer is
//! behind, so memory use stays at `buffers × len` whatever the image size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Condvar, Mutex};

/// A step's bytes on its way to the image.
struct Job {
    /// The block the bytes belong to (named in an error).
    block: u64,
    /// Offset in the image file.
    at: u64,
    buf: Vec<u8>,
    len: usize,
}

/// Buffers not in use, how many exist, and the first failed write.
struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
    len: usize,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    made: usize,
    /// The block whose write failed first, and why; set, nothing more is written.
    failed: Option<(u64, io::Error)>,
    /// The writer has gone (after a failure or a bug): nobody frees buffers any more.
    closed: bool,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.lock().free.push(buf);
        self.freed.notify_one();
    }
}

/// The copying threads' side of the writer: a buffer to fill, and the queue to it.
pub(crate) struct Queue<'a> {
    pool: &'a Pool,
    tx: SyncSender<Job>,
}

impl Queue<'_> {
    /// A buffer of the pool's length to fill: a free one, a new one while fewer than
    /// the pool's count exist, or the next one the writer gives back. None once a write
    /// has failed (the caller stops; the failure is what [`write_with`] returns).
    pub(crate) fn buffer(&self) -> Option<Vec<u8>> {
        let mut s = self.pool.lock();
        loop {
            if s.failed.is_some() || s.closed {
                return None;
            }
            if let Some(b) = s.free.pop() {
                return Some(b);
            }
            if s.made < self.pool.max {
                s.made += 1;
                return Some(vec![0u8; self.pool.len]);
            }
            s = self.pool.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Queues `buf[..len]` to be written at `at` in the image (for `block`). The buffer
    /// comes back to the pool once written. False when the writer has stopped.
    pub(crate) fn write(&self, block: u64, at: u64, buf: Vec<u8>, len: usize) -> bool {
        let len = len.min(buf.len());
        self.tx
            .send(Job {
                block,
                at,
                buf,
                len,
            })
            .is_ok()
    }

    /// Hands back a buffer that turned out to need no write (all zeros).
    pub(crate) fn give_back(&self, buf: Vec<u8>) {
        self.pool.give_back(buf);
    }
}

/// Marks the pool closed when the writer thread ends however it ends, so no copying
/// thread waits for a buffer that will never come back.
struct Closing<'a>(&'a Pool);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.freed.notify_all();
    }
}

/// Runs `fill` with a queue to a writer thread that writes into `file` with up to
/// `buffers` buffers of `len` bytes in flight; returns what `fill` returned and, when a
/// write failed, the first failed block and its error. Every queued write has been
/// made (or dropped after the failure) when this returns. Err: the writer thread could
/// not be started (`fill` did not run).
pub(crate) fn write_with<R>(
    file: &File,
    buffers: usize,
    len: usize,
    fill: impl FnOnce(&Queue<'_>) -> R,
) -> io::Result<(R, Option<(u64, io::Error)>)> {
    let pool = Pool {
        state: Mutex::new(PoolState {
            free: Vec::new(),
            made: 0,
            failed: None,
            closed: false,
        }),
        freed: Condvar::new(),
        max: buffers.max(1),
        len,
    };
    let (tx, rx) = sync_channel::<Job>(pool.max);
    let r = std::thread::scope(|s| {
        let pool = &pool;
        std::thread::Builder::new()
            .name("hostmem-write".into())
            .spawn_scoped(s, move || {
                let _closing = Closing(pool);
                for job in rx {
                    if pool.lock().failed.is_none() {
                        if let Err(e) = file.write_all_at(&job.buf[..job.len], job.at) {
                            pool.lock().failed = Some((job.block, e));
                            pool.freed.notify_all();
                        }
                    }
                    pool.give_back(job.buf);
                }
            })?;
        // The queue, and with it the sender, is dropped when `fill` returns: the
        // writer drains what is queued and ends, and the scope waits for it.
        Ok::<R, io::Error>(fill(&Queue { pool, tx }))
    })?;
    let failed = pool.lock().failed.take();
    Ok((r, failed))
}
