//! What every connection of one monitor shares: the backends, the machine defaults and
//! limits, the clients (for the SHUTDOWN event), and the bookkeeping shutdown needs to
//! stop cleanly: which commands are running and which preallocations to cancel.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hostmem::{Backend, MachineDefaults, Progress};
use serde_json::{json, Value};

use super::limits::Limits;
use super::registry::Registry;
use crate::signals::Stop;

/// A connected client, as the server and the SHUTDOWN broadcast see it.
pub(super) struct Client {
    pub(super) id: u64,
    pub(super) writer: Arc<Mutex<UnixStream>>,
    pub(super) negotiated: Arc<AtomicBool>,
}

/// What every connection thread shares.
pub struct Shared {
    pub(super) registry: Registry,
    pub(super) defaults: MachineDefaults,
    pub(super) limits: Limits,
    pub(super) stop: Mutex<Sender<Stop>>,
    pub(super) stopping: AtomicBool,
    pub(super) clients: Mutex<Vec<Client>>,
    pub(super) next_client: AtomicU64,
    /// Commands running now, and a signal for when none is.
    pub(super) running: Mutex<usize>,
    pub(super) idle: Condvar,
    pub(super) preallocs: Mutex<Vec<Arc<Progress>>>,
}

/// Locks a mutex even if a thread panicked while holding it: a command that panicked
/// is answered with an error (see `dispatch`), and the monitor must go on serving.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A preallocation that quit and signals can cancel; unregistered on drop.
pub struct Tracked<'a> {
    shared: &'a Shared,
    progress: Arc<Progress>,
}

impl std::ops::Deref for Tracked<'_> {
    type Target = Progress;
    fn deref(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        lock(&self.shared.preallocs).retain(|p| !Arc::ptr_eq(p, &self.progress));
    }
}

/// Counts a command as running until dropped (also on unwinding).
pub(super) struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut n = lock(&self.0.running);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Shared {
    pub(super) fn new(
        backends: Vec<Backend>,
        defaults: MachineDefaults,
        limits: Limits,
        stop: Sender<Stop>,
    ) -> Self {
        Shared {
            registry: Registry::new(backends),
            defaults,
            limits,
            stop: Mutex::new(stop),
            stopping: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
            next_client: AtomicU64::new(0),
            running: Mutex::new(0),
            idle: Condvar::new(),
            preallocs: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A progress for a preallocation, cancelled if the server stops meanwhile.
    pub fn track_prealloc(&self) -> Tracked<'_> {
        let progress = Arc::new(Progress::new());
        lock(&self.preallocs).push(progress.clone());
        if self.stopping() {
            progress.cancel();
        }
        Tracked {
            shared: self,
            progress,
        }
    }

    /// Counts a command as running, or None once the server is stopping (the check and
    /// the count are under one lock, so shutdown never misses a command).
    pub(super) fn begin(&self) -> Option<Running<'_>> {
        let mut n = lock(&self.running);
        if self.stopping() {
            return None;
        }
        *n += 1;
        Some(Running(self))
    }

    /// Sends QEMU's SHUTDOWN event to every negotiated client. A client whose writer
    /// is busy (blocked on a full socket) is skipped rather than waited for.
    pub fn broadcast_shutdown(&self, reason: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let event = json!({
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
            "event": "SHUTDOWN",
            "data": {"guest": false, "reason": reason},
        });
        let line = message_bytes(&event);
        for c in lock(&self.clients).iter() {
            if c.negotiated.load(Ordering::SeqCst) {
                if let Ok(mut w) = c.writer.try_lock() {
                    let _ = w.write_all(&line);
                }
            }
        }
    }
}

/// One message as it goes on the wire: compact JSON and a newline.
pub(super) fn message_bytes(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}
