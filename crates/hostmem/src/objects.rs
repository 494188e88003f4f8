//! QEMU's `/objects` container: the backends and thread-contexts of one program by id.
//!
//! Both front ends keep their objects here, so the rules they share are written once:
//! ids are unique across every object (with QEMU's message for a duplicate),
//! thread-contexts are made before the backends that link them (`prealloc-context`),
//! a link resolves among the objects ([`Objects::lookup`]), a context is deleted at once
//! while a backend is deleted only if it is not in use, and objects are listed in the
//! order they were made. `hostmem run` declares its `-object` list and creates it in
//! one go ([`Objects::declare`], [`Objects::create`]); the QMP monitor reserves an id,
//! makes the object without holding its table, then fills the reservation
//! ([`Objects::reserve`], [`Objects::fill_backend`]).
//!
//! The container is plain data with no lock: a server that shares it between threads
//! puts it behind its own, and holds its backends through a handle of its own (any
//! [`Member`]), so a long operation on one backend never holds the table.

use std::sync::Arc;

use crate::backend::Backend;
use crate::context::{ThreadContext, QOM_TYPE as CONTEXT_TYPE};
use crate::error::Error;
use crate::kind::Kind;
use crate::objspec::{ObjectSpec, ObjectType};
use crate::props::{Lookup, MachineDefaults};

/// What the container needs to know of a backend it holds: the backend itself, or a
/// handle a server shares between threads.
pub trait Member {
    /// The backend's object id.
    fn id(&self) -> &str;
    /// The backend's kind (its QOM type, for listings).
    fn kind(&self) -> Kind;
}

impl Member for Backend {
    fn id(&self) -> &str {
        Backend::id(self)
    }
    fn kind(&self) -> Kind {
        Backend::kind(self)
    }
}

impl<T: Member> Member for Arc<T> {
    fn id(&self) -> &str {
        T::id(self)
    }
    fn kind(&self) -> Kind {
        T::kind(self)
    }
}

/// One place in the container.
#[derive(Debug)]
pub enum Object<B = Backend> {
    /// An `-object` of a command line, made by [`Objects::create`].
    Declared(ObjectSpec),
    /// An id taken for an object being made (a QMP `object-add` preallocating): not
    /// in the tree yet, but no other object may take the id.
    Reserved(String),
    /// A memory backend.
    Backend(B),
    /// A thread-context. Backends that link it hold it too, and keep it after it is
    /// deleted from the container, as QEMU's links do.
    Context(Arc<ThreadContext>),
}

impl<B: Member> Object<B> {
    /// The object's id.
    pub fn id(&self) -> &str {
        match self {
            Object::Declared(s) => &s.id,
            Object::Reserved(id) => id,
            Object::Backend(b) => b.id(),
            Object::Context(c) => c.id(),
        }
    }
}

/// Why an id cannot be taken or an object deleted; the texts are QEMU's where QEMU has
/// the case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectsError {
    /// Another object has the id.
    #[error("attempt to add duplicate property '{0}' to object (type 'container')")]
    Duplicate(String),
    /// No object has the id.
    #[error("object '{0}' not found")]
    NotFound(String),
    /// The object is still being made (preallocating); it cannot be deleted yet.
    #[error("object '{0}' is still being created (preallocating), can not be deleted")]
    BeingCreated(String),
    /// The backend refused to be deleted ([`Backend::delete`]: it is in use).
    #[error(transparent)]
    Refused(Error),
}

/// An object of a command line that could not be made, and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CreateError {
    /// Its place among the objects declared ([`Objects::declare`]), from 0.
    pub index: usize,
    /// What the library said.
    pub error: Error,
}

/// The first half of a delete ([`Objects::begin_delete`]).
#[derive(Debug)]
pub enum Deleting<'a, B> {
    /// A thread-context: already gone from the container.
    Done,
    /// A backend: still there; [`Objects::finish_delete`] deletes it.
    Backend(&'a B),
}

/// The objects of one program by id, in the order they were made.
#[derive(Debug)]
pub struct Objects<B = Backend> {
    slots: Vec<Object<B>>,
}

impl<B> Default for Objects<B> {
    fn default() -> Self {
        Objects { slots: Vec::new() }
    }
}

impl<B: Member> Objects<B> {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.id() == id)
    }

    fn take_id(&self, id: &str) -> Result<(), ObjectsError> {
        match self.position(id) {
            Some(_) => Err(ObjectsError::Duplicate(id.to_string())),
            None => Ok(()),
        }
    }

    /// Adds an `-object` of a command line, to be made by [`Objects::create`]; its id
    /// must be new. Until then links to it resolve as an object that is no context.
    pub fn declare(&mut self, spec: ObjectSpec) -> Result<(), ObjectsError> {
        self.take_id(&spec.id)?;
        self.slots.push(Object::Declared(spec));
        Ok(())
    }

    /// Takes a new id for an object about to be made; give it back with
    /// [`Objects::release`] if making it fails.
    pub fn reserve(&mut self, id: &str) -> Result<(), ObjectsError> {
        self.take_id(id)?;
        self.slots.push(Object::Reserved(id.to_string()));
        Ok(())
    }

    /// Gives back a reservation whose object could not be made.
    pub fn release(&mut self, id: &str) {
        self.slots
            .retain(|s| !matches!(s, Object::Reserved(r) if r == id));
    }

    /// Puts a made object where its reservation is (its place in creation order), or
    /// last if it had none.
    fn fill(&mut self, object: Object<B>) {
        let at = self
            .slots
            .iter()
            .position(|s| matches!(s, Object::Reserved(r) if r == object.id()));
        match at {
            Some(at) => self.slots[at] = object,
            None => self.slots.push(object),
        }
    }

    /// Puts a backend made for a reserved id ([`Objects::reserve`]) in its place.
    pub fn fill_backend(&mut self, backend: B) {
        self.fill(Object::Backend(backend));
    }

    /// Puts a started thread-context made for a reserved id in its place.
    pub fn fill_context(&mut self, context: Arc<ThreadContext>) {
        self.fill(Object::Context(context));
    }

    /// Adds a backend under a new id.
    pub fn add_backend(&mut self, backend: B) -> Result<(), ObjectsError> {
        self.take_id(backend.id())?;
        self.slots.push(Object::Backend(backend));
        Ok(())
    }

    /// A backend by id.
    pub fn backend(&self, id: &str) -> Option<&B> {
        self.backends().find(|b| b.id() == id)
    }

    /// A thread-context by id.
    pub fn context(&self, id: &str) -> Option<&Arc<ThreadContext>> {
        self.slots.iter().find_map(|s| match s {
            Object::Context(c) if c.id() == id => Some(c),
            _ => None,
        })
    }

    /// What an id names, for resolving a link (`prealloc-context`): a context, some
    /// other object (declared or made), or nothing (an object still being made is
    /// not in the tree yet).
    pub fn lookup(&self, id: &str) -> Option<Lookup> {
        match self.slots.iter().find(|s| s.id() == id)? {
            Object::Context(c) => Some(Lookup::Context(c.clone())),
            Object::Declared(_) | Object::Backend(_) => Some(Lookup::Other),
            Object::Reserved(_) => None,
        }
    }

    /// The backends, in creation order.
    pub fn backends(&self) -> impl Iterator<Item = &B> {
        self.slots.iter().filter_map(|s| match s {
            Object::Backend(b) => Some(b),
            _ => None,
        })
    }

    /// The backends, in creation order, to change.
    pub fn backends_mut(&mut self) -> impl Iterator<Item = &mut B> {
        self.slots.iter_mut().filter_map(|s| match s {
            Object::Backend(b) => Some(b),
            _ => None,
        })
    }

    /// Every made object's id and QEMU type name, in creation order (what `qom-list
    /// /objects` shows).
    pub fn children(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.slots.iter().filter_map(|s| match s {
            Object::Backend(b) => Some((b.id(), b.kind().qom_type())),
            Object::Context(c) => Some((c.id(), CONTEXT_TYPE)),
            Object::Declared(_) | Object::Reserved(_) => None,
        })
    }

    /// The same objects with each backend turned into `f`'s handle (a server's
    /// lockable entry), in the same places.
    pub fn map_backends<C>(self, mut f: impl FnMut(B) -> C) -> Objects<C> {
        Objects {
            slots: self
                .slots
                .into_iter()
                .map(|s| match s {
                    Object::Backend(b) => Object::Backend(f(b)),
                    Object::Declared(d) => Object::Declared(d),
                    Object::Reserved(r) => Object::Reserved(r),
                    Object::Context(c) => Object::Context(c),
                })
                .collect(),
        }
    }

    /// The first half of a delete, for a caller that must wait for the backend without
    /// holding the container: a thread-context goes at once (backends that link it
    /// keep it, their link reading empty, as in QEMU); a backend is returned, to be
    /// deleted by [`Objects::finish_delete`]; an object still being made cannot be
    /// deleted.
    pub fn begin_delete(&mut self, id: &str) -> Result<Deleting<'_, B>, ObjectsError> {
        let at = self
            .position(id)
            .ok_or_else(|| ObjectsError::NotFound(id.to_string()))?;
        if let Object::Context(c) = &self.slots[at] {
            c.detach();
            self.slots.remove(at);
            return Ok(Deleting::Done);
        }
        match &self.slots[at] {
            Object::Backend(b) => Ok(Deleting::Backend(b)),
            _ => Err(ObjectsError::BeingCreated(id.to_string())),
        }
    }

    /// The second half of a delete: runs `delete` on the backend with this id if
    /// `still` says it is the one [`Objects::begin_delete`] returned (another caller may
    /// have deleted it meanwhile), and takes it out only if `delete` succeeds (it
    /// refuses while the memory is in use).
    pub fn finish_delete(
        &mut self,
        id: &str,
        still: impl Fn(&B) -> bool,
        delete: impl FnOnce(&mut B) -> crate::Result<()>,
    ) -> Result<(), ObjectsError> {
        let at = self
            .slots
            .iter()
            .position(|s| matches!(s, Object::Backend(b) if b.id() == id && still(b)))
            .ok_or_else(|| ObjectsError::NotFound(id.to_string()))?;
        if let Object::Backend(b) = &mut self.slots[at] {
            delete(b).map_err(ObjectsError::Refused)?;
        }
        self.slots.remove(at);
        Ok(())
    }
}

impl<B> IntoIterator for Objects<B> {
    type Item = Object<B>;
    type IntoIter = std::vec::IntoIter<Object<B>>;

    /// Every object in creation order, reservations and declarations included.
    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter()
    }
}

impl Objects<Backend> {
    /// Makes the declared objects as QEMU makes its `-object` list: the thread-contexts
    /// first (started: they are QEMU's "early" objects), so a backend may link a
    /// context declared after it, then the backends, configured with their links
    /// resolved and not yet allocated (allocate them together with
    /// [`Backend::complete_batch`] over [`Objects::backends_mut`]). Afterwards the
    /// contexts come before the backends in creation order. Stops at the first object
    /// that cannot be made.
    pub fn create(&mut self, defaults: &MachineDefaults) -> Result<(), CreateError> {
        let declared: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Object::Declared(_)))
            .collect();
        let is_context =
            |s: &Object| matches!(s, Object::Declared(d) if d.ty == ObjectType::ThreadContext);
        let (contexts, backends): (Vec<_>, Vec<_>) = declared
            .iter()
            .copied()
            .enumerate()
            .partition(|&(_, at)| is_context(&self.slots[at]));
        for (index, at) in contexts.into_iter().chain(backends) {
            let Object::Declared(spec) = &self.slots[at] else {
                continue;
            };
            let made = match spec.ty {
                ObjectType::ThreadContext => spec
                    .to_context()
                    .and_then(|c| c.complete().map(|()| Object::Context(c))),
                ObjectType::Backend(_) => spec
                    .to_backend_with(defaults, &|id| self.lookup(id))
                    .map(Object::Backend),
            };
            self.slots[at] = made.map_err(|error| CreateError { index, error })?;
        }
        // Creation order: the contexts were made first.
        let (mut made, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.slots)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| !declared.contains(i));
        let (contexts, backends): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(_, s)| matches!(s, Object::Context(_)));
        made.extend(contexts);
        made.extend(backends);
        self.slots = made.into_iter().map(|(_, s)| s).collect();
        Ok(())
    }

    /// Deletes a backend (refused while in use) or a thread-context by id.
    pub fn delete(&mut self, id: &str) -> Result<(), ObjectsError> {
        match self.begin_delete(id)? {
            Deleting::Done => Ok(()),
            Deleting::Backend(_) => self.finish_delete(id, |_| true, Backend::delete),
        }
    }

    /// Deletes every backend ([`Backend::delete`]); returns the refusals (a consumer
    /// still holds the memory), whose backends stay in the container.
    pub fn delete_all(&mut self) -> Vec<Error> {
        let mut refused = Vec::new();
        self.slots.retain_mut(|s| match s {
            Object::Backend(b) => match b.delete() {
                Ok(()) => false,
                Err(e) => {
                    refused.push(e);
                    true
                }
            },
            _ => true,
        });
        refused
    }
}

#[cfg(test)]
mod tests;
