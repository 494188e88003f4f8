//! `object-add` and `object-del`: memory backends and thread-contexts, made from the
//! arguments exactly as the library makes a JSON `-object` (`ObjectSpec::from_json`),
//! so QMP and the command line check members the same way.

use hostmem::objspec::ObjectType;
use hostmem::props::Lookup;
use hostmem::ObjectSpec;
use serde_json::{json, Value};

use super::args::Args;
use super::error::QmpError;
use super::Shared;

/// The monitor's objects, for links (`prealloc-context`).
pub fn resolver(shared: &Shared) -> impl Fn(&str) -> Option<Lookup> + '_ {
    |id| shared.registry.lookup(id)
}

pub fn add(shared: &Shared, args: Args) -> Result<Value, QmpError> {
    let spec = ObjectSpec::from_json(args.into_map())?;
    let id = spec.id.clone();
    match spec.ty {
        ObjectType::ThreadContext => {
            let tc = spec.to_context()?;
            in_slot(
                shared,
                &id,
                || tc.complete().map(|()| tc),
                |tc| shared.registry.fill_context(tc),
            )
        }
        ObjectType::Backend(_) => {
            let mut b = spec.to_backend_with(&shared.defaults, &resolver(shared))?;
            shared.limits.check(&id, b.config())?;
            // No lock is held while the memory is mapped and preallocated.
            let progress = shared.track_prealloc();
            in_slot(
                shared,
                &id,
                || b.complete_with(&progress).map(|()| b),
                |b| shared.registry.fill(b),
            )
        }
    }
}

/// Takes the id, makes the object (which may take long: no table lock is held), then
/// puts it in its slot, or gives the id back if making it failed.
fn in_slot<T>(
    shared: &Shared,
    id: &str,
    make: impl FnOnce() -> hostmem::Result<T>,
    fill: impl FnOnce(T),
) -> Result<Value, QmpError> {
    shared
        .registry
        .reserve(id)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    match make() {
        Ok(object) => {
            fill(object);
            Ok(json!({}))
        }
        Err(e) => {
            shared.registry.release(id);
            Err(e.into())
        }
    }
}

pub fn del(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let id = args.string("id")?;
    args.finish()?;
    shared
        .registry
        .delete(&id)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({}))
}
