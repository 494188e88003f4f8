//! What every connection of one monitor shares: the backends, the machine defaults and
//! limits, the clients (for the SHUTDOWN event), and the bookkeeping shutdown needs to
//! stop cleanly: which commands are running and which preallocations to cancel.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostmem::{MachineDefaults, Progress};
use serde_json::{json, Value};

use super::limits::Limits;
use super::registry::{NotDeleted, Registry};
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
        registry: Registry,
        defaults: MachineDefaults,
        limits: Limits,
        stop: Sender<Stop>,
    ) -> Self {
        Shared {
            registry,
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

    /// The end of a stop, once new commands are refused and preallocations cancelled:
    /// waits up to `drain` for the commands in flight, disconnects every client, then
    /// deletes every backend. Returns the backends that could not be deleted.
    pub(super) fn finish(&self, drain: Duration) -> Vec<NotDeleted> {
        {
            let n = lock(&self.running);
            let _ = self.idle.wait_timeout_while(n, drain, |n| *n > 0);
        }
        for c in lock(&self.clients).iter() {
            let _ = lock(&c.writer).shutdown(std::net::Shutdown::Both);
        }
        self.registry.delete_all()
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc::channel;

    use hostmem::ObjectSpec;

    use super::*;
    use hostmem::Backend;

    /// A file backend whose deletion the kernel shows: `discard-data=on` punches the
    /// file's blocks out on `Backend::delete` and only there (dropping the backend
    /// unmaps the memory and leaves the blocks).
    fn discarding_file(id: &str, path: &Path) -> Backend {
        let spec = format!(
            "memory-backend-file,id={id},size=2M,mem-path={},share=on,prealloc=on,discard-data=on",
            path.display()
        );
        let mut b = ObjectSpec::parse(&spec)
            .and_then(|s| s.to_backend(&MachineDefaults::default()))
            .unwrap();
        b.complete().unwrap();
        assert!(blocks(path) > 0, "prealloc allocated the file's blocks");
        b
    }

    fn blocks(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks()
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hostmem-shutdown-{name}-{}", std::process::id()))
    }

    fn shared(backends: Vec<Backend>) -> Shared {
        Shared::new(
            Registry::with_backends(backends),
            MachineDefaults::default(),
            Limits::default(),
            channel().0,
        )
    }

    #[test]
    fn shutdown_deletes_a_backend_a_command_still_refers_to() {
        let path = scratch("held");
        let s = shared(vec![discarding_file("f", &path)]);
        // A command that looked the backend up and has not finished by the deadline.
        let running = s.begin().unwrap();
        let held = s.registry.get("f").unwrap();
        let not_deleted = s.finish(Duration::from_millis(50));
        assert!(not_deleted.is_empty(), "{not_deleted:?}");
        assert_eq!(
            blocks(&path),
            0,
            "Backend::delete ran: discard-data punched"
        );
        assert!(
            !held.lock().is_live(),
            "the command's reference sees it deleted"
        );
        drop((running, held));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn shutdown_names_what_it_cannot_delete() {
        let (busy, used) = (scratch("busy"), scratch("used"));
        let s = shared(vec![
            discarding_file("busy", &busy),
            discarding_file("used", &used),
        ]);
        s.registry.reserve("new").unwrap();
        // A command mid-operation on one, a consumer holding the other.
        let entry = s.registry.get("busy").unwrap();
        let operation = entry.lock();
        let consumer = s.registry.get("used").unwrap().lock().hold().unwrap();
        let text: Vec<String> = s
            .finish(Duration::from_millis(10))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with("object 'busy' is still busy with a command"));
        assert!(text[1].starts_with("object 'used' is in use, can not be deleted"));
        assert!(text[2].starts_with("object 'new' was still being created"));
        assert!(
            blocks(&busy) > 0 && blocks(&used) > 0,
            "neither was deleted"
        );
        // An object-add that ends after the stop: its backend is deleted at once.
        let late = scratch("late");
        s.registry.fill(discarding_file("new", &late));
        assert_eq!(blocks(&late), 0, "Backend::delete ran on the late backend");
        assert!(s.registry.live().is_empty());
        drop((operation, consumer));
        for p in [busy, used, late] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
