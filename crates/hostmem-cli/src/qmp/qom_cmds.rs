//! `qom-list`, `qom-get` and `qom-set` over the tree of `qom.rs`: a backend's
//! properties come from the library's property table and are set through the library;
//! a thread-context's are its CPU affinity (read back from the kernel) and thread id.

use hostmem::context::{self, Affinity};
use hostmem::props::Common;
use hostmem::ThreadContext;
use serde_json::{json, Value};

use super::args::Args;
use super::error::QmpError;
use super::objects::resolver;
use super::qom::{self, Node};
use super::Shared;
use crate::report;

pub fn list(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let path = args.string("path")?;
    args.finish()?;
    let node = qom::resolve(&shared.registry, &path).map_err(|e| e.into_qmp(true))?;
    let mut list = vec![("type".to_string(), "string".to_string())];
    match node {
        Node::Root => list.push(("objects".into(), "child<container>".into())),
        Node::Objects => list.extend(
            shared
                .registry
                .children()
                .into_iter()
                .map(|(id, ty)| (id, format!("child<{ty}>"))),
        ),
        Node::Object(e) => list.extend(
            hostmem::kind::properties(e.kind)
                .map(|p| (p.name.to_string(), p.ty.qom_name().to_string())),
        ),
        Node::Context(_) => list.extend(
            context::PROPERTIES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string())),
        ),
    }
    Ok(list
        .into_iter()
        .map(|(name, ty)| json!({"name": name, "type": ty}))
        .collect())
}

/// The type name QEMU uses in `Property 'TYPE.NAME' ...` messages.
fn type_name(node: &Node) -> &'static str {
    match node {
        Node::Root | Node::Objects => "container",
        Node::Object(e) => e.kind.qom_type(),
        Node::Context(_) => context::QOM_TYPE,
    }
}

/// The child properties of a container: name and the path they link to.
fn child_paths(shared: &Shared, node: &Node) -> Vec<(String, String)> {
    match node {
        Node::Root => vec![("objects".into(), "/objects".into())],
        Node::Objects => shared
            .registry
            .children()
            .into_iter()
            .map(|(id, _)| (id.clone(), format!("/objects/{id}")))
            .collect(),
        Node::Object(_) | Node::Context(_) => Vec::new(),
    }
}

fn not_found(node: &Node, prop: &str) -> QmpError {
    QmpError::generic(format!("Property '{}.{prop}' not found", type_name(node)))
}

pub fn get(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let path = args.string("path")?;
    let prop = args.string("property")?;
    args.finish()?;
    let node = qom::resolve(&shared.registry, &path).map_err(|e| e.into_qmp(false))?;
    if prop == "type" {
        return Ok(json!(type_name(&node)));
    }
    if let Some((_, target)) = child_paths(shared, &node)
        .into_iter()
        .find(|(n, _)| *n == prop)
    {
        return Ok(json!(target));
    }
    let not_found = || not_found(&node, &prop);
    match &node {
        Node::Object(e) => {
            let info = hostmem::kind::lookup(e.kind, &prop).ok_or_else(not_found)?;
            let value = e.snapshot().cfg.get(info.name).ok_or_else(not_found)?;
            Ok(report::value_json(value))
        }
        Node::Context(c) => context_get(c, &prop).ok_or_else(not_found)?,
        Node::Root | Node::Objects => Err(not_found()),
    }
}

/// A thread-context property as QEMU reads it; None when there is no such property.
fn context_get(c: &ThreadContext, prop: &str) -> Option<Result<Value, QmpError>> {
    Some(match prop {
        // QEMU shows the thread id as an unsigned number (-1 before it exists).
        "thread-id" => Ok(json!(c
            .thread_id()
            .map_or(u64::from(u32::MAX), |t| t as u64))),
        "cpu-affinity" => c.cpu_affinity().map(|cpus| json!(cpus)).map_err(Into::into),
        // Write-only in QEMU.
        "node-affinity" => Err(QmpError::generic(format!(
            "Property '{}.{prop}' is not readable",
            context::QOM_TYPE
        ))),
        _ => return None,
    })
}

pub fn set(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let path = args.string("path")?;
    let prop = args.string("property")?;
    let value = args.value("value")?;
    args.finish()?;
    let node = qom::resolve(&shared.registry, &path).map_err(|e| e.into_qmp(false))?;
    let read_only = prop == "type"
        || (matches!(node, Node::Context(_)) && prop == "thread-id")
        || child_paths(shared, &node).iter().any(|(n, _)| *n == prop);
    if read_only {
        return Err(QmpError::generic(format!(
            "Property '{}.{prop}' is not writable",
            type_name(&node)
        )));
    }
    let e = match &node {
        Node::Object(e) => e,
        Node::Context(c) => {
            let which = Affinity::from_name(&prop).ok_or_else(|| not_found(&node, &prop))?;
            let ids = hostmem::props::json::u16_list(&prop, &value)?;
            c.set_affinity(which, &ids)?;
            return Ok(json!({}));
        }
        Node::Root | Node::Objects => return Err(not_found(&node, &prop)),
    };
    let info = hostmem::kind::lookup(e.kind, &prop).ok_or_else(|| not_found(&node, &prop))?;
    // QEMU refuses a live `size` before reading the value, other properties after.
    if info.name == Common::SIZE.name {
        e.lock().refuse_live_change(info.name)?;
    }
    let v = hostmem::props::json::from_json(info.name, info.ty, &value, &resolver(shared))?;
    // Through the library, with a progress that quit and signals can cancel (a live
    // prealloc off→on preallocates now).
    let progress = shared.track_prealloc();
    e.lock().set_with(info.name, v, &progress)?;
    Ok(json!({}))
}
