//! The QOM tree this monitor shows: `/` holds the `/objects` container, which holds
//! the backends and thread-contexts. Paths resolve like QEMU's: absolute (`/objects/m0`, empty components
//! ignored) or partial (`m0`, `objects/m0`: the unique node whose path ends so).

use std::sync::Arc;

use hostmem::ThreadContext;

use super::error::{ErrorClass, QmpError};
use super::registry::{Entry, Registry};

/// A node of the tree.
#[derive(Debug, Clone)]
pub enum Node {
    Root,
    Objects,
    Object(Arc<Entry>),
    Context(Arc<ThreadContext>),
}

/// Why a path names no single node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotFound(String),
    Ambiguous(String),
}

impl PathError {
    /// QEMU's words: `qom-list` says a partial path is ambiguous; `qom-get` and
    /// `qom-set` report any unresolved path as a missing device.
    pub fn into_qmp(self, listing: bool) -> QmpError {
        match self {
            PathError::Ambiguous(p) if listing => QmpError {
                class: ErrorClass::GenericError,
                desc: format!("Path '{p}' is ambiguous"),
            },
            PathError::Ambiguous(p) | PathError::NotFound(p) => QmpError::device_not_found(&p),
        }
    }
}

pub fn resolve(registry: &Registry, path: &str) -> Result<Node, PathError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || PathError::NotFound(path.to_string());
    if path.starts_with('/') {
        return match parts.as_slice() {
            [] => Ok(Node::Root),
            ["objects"] => Ok(Node::Objects),
            ["objects", id] => registry
                .get(id)
                .map(Node::Object)
                .or_else(|| registry.context(id).map(Node::Context))
                .ok_or_else(not_found),
            _ => Err(not_found()),
        };
    }
    let mut found: Vec<Node> = Vec::new();
    let ends_with = |full: &[&str]| full.ends_with(&parts);
    if ends_with(&[]) {
        found.push(Node::Root);
    }
    if ends_with(&["objects"]) {
        found.push(Node::Objects);
    }
    for (id, _) in registry.children() {
        if ends_with(&["objects", id.as_str()]) {
            if let Some(e) = registry.get(&id) {
                found.push(Node::Object(e));
            } else if let Some(c) = registry.context(&id) {
                found.push(Node::Context(c));
            }
        }
    }
    match found.len() {
        0 => Err(not_found()),
        1 => Ok(found.remove(0)),
        _ => Err(PathError::Ambiguous(path.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostmem::{Backend, Kind, MachineDefaults};

    fn registry() -> Registry {
        let b = Backend::new(Kind::Ram, "m0", &MachineDefaults::default());
        Registry::with_backends(vec![b])
    }

    #[test]
    fn absolute_and_partial_paths() {
        let r = registry();
        assert!(matches!(resolve(&r, "/"), Ok(Node::Root)));
        assert!(matches!(resolve(&r, "//objects/"), Ok(Node::Objects)));
        assert!(matches!(resolve(&r, "objects"), Ok(Node::Objects)));
        assert!(matches!(resolve(&r, "/objects//m0"), Ok(Node::Object(_))));
        assert!(matches!(resolve(&r, "m0"), Ok(Node::Object(_))));
        assert!(matches!(resolve(&r, "objects/m0"), Ok(Node::Object(_))));
        assert_eq!(
            resolve(&r, "/objects/m1").unwrap_err(),
            PathError::NotFound("/objects/m1".into())
        );
        assert_eq!(
            resolve(&r, "").unwrap_err(),
            PathError::Ambiguous("".into())
        );
        assert_eq!(
            resolve(&r, "/machine").unwrap_err(),
            PathError::NotFound("/machine".into())
        );
    }
}
