//! The monitor's `/objects` container: backends and thread-contexts by id, in creation
//! order.
//!
//! Locking is two-level so that a long operation never stalls other clients: the table
//! lock is held only to look up, reserve or remove an id; each backend has its own lock,
//! held for as long as an operation on that backend takes (a preallocation of GiBs, a
//! rebind that migrates pages). Queries read a snapshot of the settings that is
//! refreshed after every change, so they never wait for such an operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hostmem::Config;
use hostmem::{Backend, Kind, ThreadContext};

/// What queries read without taking the backend's lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cfg: Config,
    /// Address and length of the mapping in this process.
    pub addr: Option<usize>,
    pub len: usize,
}

impl Snapshot {
    fn of(b: &Backend) -> Self {
        Snapshot {
            cfg: b.config().clone(),
            addr: b.host_addr(),
            len: b.mapped_len().unwrap_or(0),
        }
    }
}

/// A live backend in the table.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub kind: Kind,
    backend: Mutex<Backend>,
    snapshot: Mutex<Snapshot>,
}

/// The backend, locked; the snapshot is refreshed when the guard goes.
pub struct Locked<'a> {
    entry: &'a Entry,
    guard: MutexGuard<'a, Backend>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Backend {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        *lock(&self.entry.snapshot) = Snapshot::of(&self.guard);
    }
}

/// Locks a mutex even if a thread panicked while holding it: the data under these
/// locks stays consistent across a panic (every change is a single assignment), and a
/// monitor that stops answering would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    fn new(b: Backend) -> Self {
        Entry {
            id: b.id().to_string(),
            kind: b.kind(),
            snapshot: Mutex::new(Snapshot::of(&b)),
            backend: Mutex::new(b),
        }
    }

    /// The backend for an operation; waits for the one in progress, if any.
    pub fn lock(&self) -> Locked<'_> {
        Locked {
            entry: self,
            guard: lock(&self.backend),
        }
    }

    /// The backend if no operation holds it right now.
    pub fn try_lock(&self) -> Option<Locked<'_>> {
        let guard = match self.backend.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Locked { entry: self, guard })
    }

    pub fn snapshot(&self) -> Snapshot {
        lock(&self.snapshot).clone()
    }
}

#[derive(Debug)]
enum Slot {
    /// An `object-add` in progress: the id is taken, the object not there yet.
    Creating(String),
    Live(Arc<Entry>),
    /// A thread-context; backends that name it hold it too, and keep it after it is
    /// deleted from the table, as QEMU's links do.
    Context(Arc<ThreadContext>),
}

impl Slot {
    fn id(&self) -> &str {
        match self {
            Slot::Creating(id) => id,
            Slot::Live(e) => &e.id,
            Slot::Context(c) => c.id(),
        }
    }
}

/// Why an id cannot be taken or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    Duplicate(String),
    NotFound(String),
    BeingCreated(String),
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Duplicate(id) => write!(
                f,
                "attempt to add duplicate property '{id}' to object (type 'container')"
            ),
            SlotError::NotFound(id) => write!(f, "object '{id}' not found"),
            SlotError::BeingCreated(id) => write!(
                f,
                "object '{id}' is still being created (preallocating), can not be deleted"
            ),
        }
    }
}

/// Why `object-del` failed.
#[derive(Debug)]
pub enum DeleteError {
    Slot(SlotError),
    /// The library refused (in use).
    Backend(hostmem::Error),
}

impl From<SlotError> for DeleteError {
    fn from(e: SlotError) -> Self {
        DeleteError::Slot(e)
    }
}

impl std::fmt::Display for DeleteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeleteError::Slot(e) => e.fmt(f),
            DeleteError::Backend(e) => e.fmt(f),
        }
    }
}

/// A backend shutdown could not delete, and why. Said on stderr by name: a backend is
/// never dropped without [`Backend::delete`] unless someone is told.
#[derive(Debug)]
pub enum NotDeleted {
    /// The library refused: a consumer still holds the memory.
    Refused(hostmem::Error),
    /// A command still works on it after the shutdown's wait (its lock is held).
    Busy(String),
    /// Its `object-add` was still running.
    Creating(String),
}

impl std::fmt::Display for NotDeleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotDeleted::Refused(e) => write!(f, "{e}; left to the end of the process"),
            NotDeleted::Busy(id) => write!(
                f,
                "object '{id}' is still busy with a command at shutdown, can not be deleted; left to the end of the process"
            ),
            NotDeleted::Creating(id) => write!(
                f,
                "object '{id}' was still being created at shutdown; deleted if its creation ends before the process"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<Vec<Slot>>,
    /// Set (under the `slots` lock) by [`Registry::delete_all`]: nothing is added after.
    closed: AtomicBool,
}

impl Registry {
    /// A table of the objects `hostmem run` made: contexts first, as QEMU makes them.
    pub fn new(backends: Vec<Backend>, contexts: Vec<Arc<ThreadContext>>) -> Self {
        Registry {
            slots: Mutex::new(
                contexts
                    .into_iter()
                    .map(Slot::Context)
                    .chain(
                        backends
                            .into_iter()
                            .map(|b| Slot::Live(Arc::new(Entry::new(b)))),
                    )
                    .collect(),
            ),
            closed: AtomicBool::new(false),
        }
    }

    /// Puts a started thread-context where its reservation was.
    pub fn fill_context(&self, c: Arc<ThreadContext>) {
        let mut slots = lock(&self.slots);
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let id = c.id().to_string();
        let slot = Slot::Context(c);
        match slots
            .iter_mut()
            .find(|s| matches!(s, Slot::Creating(c) if *c == id))
        {
            Some(s) => *s = slot,
            None => slots.push(slot),
        }
    }

    /// A thread-context by id.
    pub fn context(&self, id: &str) -> Option<Arc<ThreadContext>> {
        lock(&self.slots).iter().find_map(|s| match s {
            Slot::Context(c) if c.id() == id => Some(c.clone()),
            _ => None,
        })
    }

    /// Every object's id and QEMU type name, in creation order (`qom-list /objects`).
    pub fn children(&self) -> Vec<(String, &'static str)> {
        lock(&self.slots)
            .iter()
            .filter_map(|s| match s {
                Slot::Creating(_) => None,
                Slot::Live(e) => Some((e.id.clone(), e.kind.qom_type())),
                Slot::Context(c) => Some((c.id().to_string(), hostmem::context::QOM_TYPE)),
            })
            .collect()
    }

    /// Takes an id for an object about to be created.
    pub fn reserve(&self, id: &str) -> Result<(), SlotError> {
        let mut slots = lock(&self.slots);
        if slots.iter().any(|s| s.id() == id) {
            return Err(SlotError::Duplicate(id.to_string()));
        }
        slots.push(Slot::Creating(id.to_string()));
        Ok(())
    }

    /// Puts the created backend where its reservation was; after
    /// [`Registry::delete_all`], deletes it instead (a shutdown has emptied the table).
    pub fn fill(&self, mut b: Backend) {
        let mut slots = lock(&self.slots);
        if self.closed.load(Ordering::SeqCst) {
            drop(slots);
            if let Err(e) = b.delete() {
                eprintln!("hostmem: {}", NotDeleted::Refused(e));
            }
            return;
        }
        let entry = Slot::Live(Arc::new(Entry::new(b)));
        match slots
            .iter_mut()
            .find(|s| matches!(s, Slot::Creating(id) if id == entry.id()))
        {
            Some(slot) => *slot = entry,
            None => slots.push(entry),
        }
    }

    /// Gives back a reservation whose object could not be created.
    pub fn release(&self, id: &str) {
        lock(&self.slots).retain(|s| !matches!(s, Slot::Creating(c) if c == id));
    }

    /// The live backends, in creation order.
    pub fn live(&self) -> Vec<Arc<Entry>> {
        lock(&self.slots)
            .iter()
            .filter_map(|s| match s {
                Slot::Live(e) => Some(e.clone()),
                Slot::Creating(_) | Slot::Context(_) => None,
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.slots).iter().find_map(|s| match s {
            Slot::Live(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
    }

    /// Deletes a backend (refused while in use) or a thread-context and takes it out of
    /// the table. The table lock is not held while waiting for an operation on a backend.
    pub fn delete(&self, id: &str) -> Result<(), DeleteError> {
        let mut slots = lock(&self.slots);
        let entry = match slots.iter().position(|s| s.id() == id) {
            Some(at) if matches!(slots[at], Slot::Context(_)) => {
                // Like QEMU: a context goes from the table at once; backends that name
                // it keep it (and its thread) until they go, their link reading empty.
                if let Slot::Context(c) = slots.remove(at) {
                    c.detach();
                }
                return Ok(());
            }
            Some(at) => match &slots[at] {
                Slot::Live(e) => e.clone(),
                _ => return Err(SlotError::BeingCreated(id.into()).into()),
            },
            None => return Err(SlotError::NotFound(id.into()).into()),
        };
        drop(slots);
        let mut backend = entry.lock();
        let mut slots = lock(&self.slots);
        // Another client may have deleted it while this one waited for the lock.
        let Some(at) = slots
            .iter()
            .position(|s| matches!(s, Slot::Live(e) if Arc::ptr_eq(e, &entry)))
        else {
            return Err(SlotError::NotFound(id.into()).into());
        };
        backend.delete().map_err(DeleteError::Backend)?;
        slots.remove(at);
        Ok(())
    }

    /// Deletes every backend through [`Backend::delete`] and empties the table, for
    /// good (at shutdown, after the wait for commands in flight). A command that still
    /// refers to a backend sees it deleted; one still working on it (holding its lock)
    /// keeps it, and so does a consumer's hold: those are returned, by name, never
    /// dropped silently. An `object-add` still running is returned too, and its backend
    /// is deleted as soon as it arrives ([`Registry::fill`]).
    pub fn delete_all(&self) -> Vec<NotDeleted> {
        let slots = {
            let mut slots = lock(&self.slots);
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *slots)
        };
        let mut left = Vec::new();
        for slot in slots {
            match slot {
                Slot::Creating(id) => left.push(NotDeleted::Creating(id)),
                Slot::Context(_) => {}
                Slot::Live(e) => match e.try_lock() {
                    Some(mut b) => {
                        if let Err(err) = b.delete() {
                            left.push(NotDeleted::Refused(err));
                        }
                    }
                    None => left.push(NotDeleted::Busy(e.id.clone())),
                },
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostmem::MachineDefaults;

    fn ram(id: &str) -> Backend {
        let mut b = Backend::new(Kind::Ram, id, &MachineDefaults::default());
        b.set("size", hostmem::PropValue::Int(2 << 20)).unwrap();
        b.complete().unwrap();
        b
    }

    #[test]
    fn ids_are_unique_while_creating_and_after() {
        let r = Registry::new(vec![ram("a")], Vec::new());
        assert_eq!(r.reserve("a"), Err(SlotError::Duplicate("a".into())));
        r.reserve("b").unwrap();
        assert!(
            r.get("b").is_none(),
            "an object being created is not listed"
        );
        assert_eq!(
            r.delete("b").unwrap_err().to_string(),
            "object 'b' is still being created (preallocating), can not be deleted"
        );
        r.fill(ram("b"));
        assert_eq!(r.live().len(), 2);
        r.reserve("c").unwrap();
        r.release("c");
        r.reserve("c").unwrap();
    }

    #[test]
    fn delete_is_refused_while_in_use_and_unknown_ids_are_named() {
        let r = Registry::new(vec![ram("m")], Vec::new());
        let hold = r.get("m").unwrap().lock().hold().unwrap();
        assert_eq!(
            r.delete("m").unwrap_err().to_string(),
            "object 'm' is in use, can not be deleted"
        );
        drop(hold);
        r.delete("m").unwrap();
        assert_eq!(
            r.delete("m").unwrap_err().to_string(),
            "object 'm' not found"
        );
        assert!(r.delete_all().is_empty());
    }
}
