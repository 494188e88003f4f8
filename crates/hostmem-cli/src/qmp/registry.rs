//! The monitor's `/objects` container: the library's [`Objects`] (which keeps the rules
//! about ids, links, deletion and order, the same as `hostmem run`'s) shared between
//! the connection threads.
//!
//! Locking is two-level so that a long operation never stalls other clients: the table
//! lock is held only to look up, reserve or remove an id; each backend has its own lock,
//! held for as long as an operation on that backend takes (a preallocation of GiBs, a
//! rebind that migrates pages). Queries read a snapshot of the settings that is
//! refreshed after every change, so they never wait for such an operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hostmem::objects::{Deleting, Member, Object, Objects, ObjectsError};
use hostmem::props::Lookup;
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

impl Member for Entry {
    fn id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> Kind {
        self.kind
    }
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

/// The monitor's objects: the library's container behind one lock, with each backend
/// behind its own.
#[derive(Debug, Default)]
pub struct Registry {
    objects: Mutex<Objects<Arc<Entry>>>,
    /// Set (under the `objects` lock) by [`Registry::delete_all`]: nothing is added after.
    closed: AtomicBool,
}

impl Registry {
    /// A table of the objects `hostmem run` made, in their creation order.
    pub fn new(objects: Objects) -> Self {
        Registry {
            objects: Mutex::new(objects.map_backends(|b| Arc::new(Entry::new(b)))),
            closed: AtomicBool::new(false),
        }
    }

    /// A table of these backends, for a monitor started on its own; a backend whose id
    /// is taken already is named on stderr and deleted, never kept twice.
    pub fn with_backends(backends: Vec<Backend>) -> Self {
        let mut objects = Objects::new();
        for mut b in backends {
            match objects.reserve(b.id()) {
                Ok(()) => objects.fill_backend(b),
                Err(e) => {
                    eprintln!("hostmem: {e}");
                    if let Err(e) = b.delete() {
                        eprintln!("hostmem: {}", NotDeleted::Refused(e));
                    }
                }
            }
        }
        Registry::new(objects)
    }

    fn objects(&self) -> MutexGuard<'_, Objects<Arc<Entry>>> {
        lock(&self.objects)
    }

    /// Puts a started thread-context where its reservation was.
    pub fn fill_context(&self, c: Arc<ThreadContext>) {
        let mut objects = self.objects();
        if !self.closed.load(Ordering::SeqCst) {
            objects.fill_context(c);
        }
    }

    /// A thread-context by id.
    pub fn context(&self, id: &str) -> Option<Arc<ThreadContext>> {
        self.objects().context(id).cloned()
    }

    /// What an id names, for links (`prealloc-context`).
    pub fn lookup(&self, id: &str) -> Option<Lookup> {
        self.objects().lookup(id)
    }

    /// Every object's id and QEMU type name, in creation order (`qom-list /objects`).
    pub fn children(&self) -> Vec<(String, &'static str)> {
        self.objects()
            .children()
            .map(|(id, ty)| (id.to_string(), ty))
            .collect()
    }

    /// Takes an id for an object about to be created.
    pub fn reserve(&self, id: &str) -> Result<(), ObjectsError> {
        self.objects().reserve(id)
    }

    /// Puts the created backend where its reservation was; after
    /// [`Registry::delete_all`], deletes it instead (a shutdown has emptied the table).
    pub fn fill(&self, mut b: Backend) {
        let mut objects = self.objects();
        if self.closed.load(Ordering::SeqCst) {
            drop(objects);
            if let Err(e) = b.delete() {
                eprintln!("hostmem: {}", NotDeleted::Refused(e));
            }
            return;
        }
        objects.fill_backend(Arc::new(Entry::new(b)));
    }

    /// Gives back a reservation whose object could not be created.
    pub fn release(&self, id: &str) {
        self.objects().release(id);
    }

    /// The live backends, in creation order.
    pub fn live(&self) -> Vec<Arc<Entry>> {
        self.objects().backends().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.objects().backend(id).cloned()
    }

    /// Deletes a backend (refused while in use) or a thread-context and takes it out of
    /// the table, by the library's rules. The table lock is not held while waiting for
    /// an operation on a backend.
    pub fn delete(&self, id: &str) -> Result<(), ObjectsError> {
        let entry = match self.objects().begin_delete(id)? {
            Deleting::Done => return Ok(()),
            Deleting::Backend(e) => e.clone(),
        };
        let mut backend = entry.lock();
        // Another client may have deleted it while this one waited for the lock.
        self.objects()
            .finish_delete(id, |e| Arc::ptr_eq(e, &entry), |_| backend.delete())
    }

    /// Deletes every backend through [`Backend::delete`] and empties the table, for
    /// good (at shutdown, after the wait for commands in flight). A command that still
    /// refers to a backend sees it deleted; one still working on it (holding its lock)
    /// keeps it, and so does a consumer's hold: those are returned, by name, never
    /// dropped silently. An `object-add` still running is returned too, and its backend
    /// is deleted as soon as it arrives ([`Registry::fill`]).
    pub fn delete_all(&self) -> Vec<NotDeleted> {
        let objects = {
            let mut objects = self.objects();
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *objects)
        };
        let mut left = Vec::new();
        for object in objects {
            match object {
                Object::Reserved(id) => left.push(NotDeleted::Creating(id)),
                Object::Declared(_) | Object::Context(_) => {}
                Object::Backend(e) => match e.try_lock() {
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
        let r = Registry::with_backends(vec![ram("a")]);
        assert!(matches!(r.reserve("a"), Err(ObjectsError::Duplicate(_))));
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
        let r = Registry::with_backends(vec![ram("m")]);
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
