//! The commands: QEMU's for memory backends, with QEMU's reply shapes, plus the
//! downstream extensions (`__org.hostmem_*`, QMP's rule for names outside QEMU).

use hostmem::numa::{NodeSet, Policy};
use serde_json::{json, Map, Value};

use super::args::Args;
use super::error::QmpError;
use super::registry::{Entry, Snapshot};
use super::{objects, qom_cmds};
use super::{Session, Shared};
use crate::report;

pub const REBIND: &str = "__org.hostmem_memdev-rebind";
pub const RESIDENCY: &str = "__org.hostmem_query-memdev-residency";

/// Every command, as `query-commands` lists them.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "object-add",
    "object-del",
    "qom-list",
    "qom-get",
    "qom-set",
    "query-memdev",
    "quit",
    REBIND,
    RESIDENCY,
];

/// What the connection must do after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// `quit`: stop the server once the reply is out.
    Quit,
}

/// `query-version` and the greeting: hostmem's own version in QEMU's shape.
pub fn version() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    json!({
        "qemu": {
            "major": parts.next().unwrap_or(0),
            "minor": parts.next().unwrap_or(0),
            "micro": parts.next().unwrap_or(0),
        },
        "package": format!("hostmem {v}"),
    })
}

/// Runs one command for a session.
pub fn execute(
    shared: &Shared,
    session: &mut Session,
    command: &str,
    arguments: Map<String, Value>,
    oob: bool,
) -> Result<(Value, After), QmpError> {
    let args = Args::new(arguments);
    if !session.negotiated && command != "qmp_capabilities" {
        return Err(QmpError::command_not_found(
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ));
    }
    if !COMMANDS.contains(&command) {
        return Err(QmpError::command_not_found(format!(
            "The command {command} has not been found"
        )));
    }
    if oob {
        // No command here is one of QEMU's few out-of-band ones.
        return Err(QmpError::generic(format!(
            "The command {command} does not support OOB"
        )));
    }
    let done = |v: Value| Ok((v, After::Continue));
    match command {
        "qmp_capabilities" => done(capabilities(session, args)?),
        "query-commands" => {
            args.finish()?;
            done(COMMANDS.iter().map(|c| json!({"name": c})).collect())
        }
        "query-version" => {
            args.finish()?;
            done(version())
        }
        "object-add" => done(objects::add(shared, args)?),
        "object-del" => done(objects::del(shared, args)?),
        "qom-list" => done(qom_cmds::list(shared, args)?),
        "qom-get" => done(qom_cmds::get(shared, args)?),
        "qom-set" => done(qom_cmds::set(shared, args)?),
        "query-memdev" => {
            args.finish()?;
            done(
                shared
                    .registry
                    .live()
                    .iter()
                    .map(|e| memdev(&e.id, &e.snapshot()))
                    .collect(),
            )
        }
        "quit" => {
            args.finish()?;
            Ok((json!({}), After::Quit))
        }
        REBIND => done(rebind(shared, args)?),
        RESIDENCY => done(residency(shared, args)?),
        _ => Err(QmpError::command_not_found(format!(
            "The command {command} has not been found"
        ))),
    }
}

fn capabilities(session: &mut Session, mut args: Args) -> Result<Value, QmpError> {
    if session.negotiated {
        return Err(QmpError::command_not_found(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    let mut oob = false;
    if let Some(v) = args.opt_value("enable") {
        let caps = v
            .as_array()
            .ok_or_else(|| QmpError::bad_type("enable", "array"))?;
        for (i, c) in caps.iter().enumerate() {
            let name = format!("enable[{i}]");
            match c.as_str() {
                Some("oob") => oob = true,
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{name}' does not accept value '{other}'"
                    )))
                }
                None => return Err(QmpError::bad_type(&name, "string")),
            }
        }
    }
    args.finish()?;
    session.negotiated = true;
    session.oob = oob;
    Ok(json!({}))
}

/// One `query-memdev` element (QEMU's `Memdev`).
fn memdev(id: &str, s: &Snapshot) -> Value {
    let c = &s.cfg.common;
    json!({
        "id": id,
        "size": c.size,
        "merge": c.merge,
        "dump": c.dump,
        "prealloc": c.prealloc,
        "share": c.share,
        "reserve": c.reserve,
        "host-nodes": c.host_nodes.iter().collect::<Vec<_>>(),
        "policy": c.policy.name(),
    })
}

fn entry(shared: &Shared, id: &str) -> Result<std::sync::Arc<Entry>, QmpError> {
    shared
        .registry
        .get(id)
        .ok_or_else(|| QmpError::generic(format!("object '{id}' not found")))
}

fn rebind(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let id = args.string("id")?;
    let policy = args.string("policy")?;
    let policy: Policy = policy.parse().map_err(|_| {
        QmpError::generic(format!(
            "Parameter 'policy' does not accept value '{policy}'"
        ))
    })?;
    let nodes = match args.opt_value("host-nodes") {
        Some(v) => hostmem::props::json::node_list("host-nodes", &v)?,
        None => NodeSet::new(),
    };
    args.finish()?;
    let e = entry(shared, &id)?;
    let mut b = e.lock();
    let r = b.rebind(policy, nodes)?;
    let view = b.inspect()?;
    let per_node: Map<String, Value> = r
        .pages_per_node
        .iter()
        .map(|(n, p)| (n.to_string(), json!(p)))
        .collect();
    Ok(json!({
        "id": id,
        "policy": b.config().common.policy.name(),
        "host-nodes": b.config().common.host_nodes.iter().collect::<Vec<_>>(),
        "pages-per-node": per_node,
        "pages-on-target": r.pages_on_target,
        "pages-present": r.pages_present,
        "pages-absent": r.pages_absent,
        "fraction-on-target": r.fraction_on_target(),
        "seconds": r.seconds,
        "mempolicy": report::mempolicy_json(&view),
    }))
}

fn residency(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let id = args.opt_string("id")?;
    args.finish()?;
    let entries = match id {
        Some(id) => vec![entry(shared, &id)?],
        None => shared.registry.live(),
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let mut o = match e.try_lock() {
            Some(b) => report::kernel_json(&b.inspect()?),
            None => busy_view(&e.snapshot()),
        };
        let s = e.snapshot();
        o["id"] = json!(e.id);
        o["host-addr"] = json!(s.addr);
        o["size"] = json!(s.len);
        out.push(o);
    }
    Ok(Value::Array(out))
}

/// The kernel's view of a backend another client is working on (a preallocation in
/// progress shows its resident bytes growing), read by address range without the
/// backend's lock.
fn busy_view(s: &Snapshot) -> Value {
    let Some(addr) = s.addr else {
        return json!({"busy": true});
    };
    let mut o = match hostmem::inspect::inspect_range(addr, s.len) {
        Ok(view) => report::kernel_json(&view),
        Err(e) => json!({"error": e.to_string()}),
    };
    o["busy"] = json!(true);
    o
}
