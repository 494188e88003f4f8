//! The commands: QEMU's for memory backends, with QEMU's reply shapes, plus the
//! downstream extensions (`__org.hostmem_*`, QMP's rule for names outside QEMU).
//!
//! [`COMMANDS`] is the one list: `query-commands` lists it, [`execute`] runs from it
//! and answers "not found" for any name outside it, so a command is one row.

use hostmem::numa::{NodeSet, Policy};
use hostmem::props::{Common, Prop};
use serde_json::{json, Map, Value};

use super::args::Args;
use super::error::QmpError;
use super::registry::{Entry, Snapshot};
use super::session::{After, Session};
use super::shared::Shared;
use super::{objects, qom_cmds};
use crate::report;

pub const REBIND: &str = "__org.hostmem_memdev-rebind";
pub const RESIDENCY: &str = "__org.hostmem_query-memdev-residency";
pub const SAVE: &str = "__org.hostmem_memdev-save";

/// How a command runs.
#[derive(Clone, Copy)]
enum Run {
    /// On the monitor's objects: nearly every command.
    Monitor(fn(&Shared, Args) -> Result<Value, QmpError>),
    /// On the connection's session (`qmp_capabilities`).
    Session(fn(&mut Session, Args) -> Result<Value, QmpError>),
}

/// One row of the command table.
pub struct Command {
    pub name: &'static str,
    run: Run,
    /// What the connection does once the reply is out.
    after: After,
}

impl Command {
    const fn new(name: &'static str, run: fn(&Shared, Args) -> Result<Value, QmpError>) -> Self {
        Command {
            name,
            run: Run::Monitor(run),
            after: After::Continue,
        }
    }
}

/// Every command, in the order `query-commands` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "qmp_capabilities",
        run: Run::Session(capabilities),
        after: After::Continue,
    },
    Command::new("query-commands", query_commands),
    Command::new("query-version", |_, args| no_args(args, version())),
    Command::new("object-add", objects::add),
    Command::new("object-del", objects::del),
    Command::new("qom-list", qom_cmds::list),
    Command::new("qom-get", qom_cmds::get),
    Command::new("qom-set", qom_cmds::set),
    Command::new("query-memdev", query_memdev),
    Command {
        name: "quit",
        run: Run::Monitor(|_, args| no_args(args, json!({}))),
        after: After::Quit,
    },
    Command::new(REBIND, rebind),
    Command::new(RESIDENCY, residency),
    Command::new(SAVE, save),
];

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
    let Some(row) = COMMANDS.iter().find(|c| c.name == command) else {
        return Err(QmpError::command_not_found(format!(
            "The command {command} has not been found"
        )));
    };
    if oob {
        // No command here is one of QEMU's few out-of-band ones.
        return Err(QmpError::generic(format!(
            "The command {command} does not support OOB"
        )));
    }
    let value = match row.run {
        Run::Monitor(run) => run(shared, args)?,
        Run::Session(run) => run(session, args)?,
    };
    Ok((value, row.after))
}

/// A command without arguments: refuses any, then answers `value`.
fn no_args(args: Args, value: Value) -> Result<Value, QmpError> {
    args.finish()?;
    Ok(value)
}

fn query_commands(_: &Shared, args: Args) -> Result<Value, QmpError> {
    no_args(
        args,
        COMMANDS.iter().map(|c| json!({"name": c.name})).collect(),
    )
}

fn query_memdev(shared: &Shared, args: Args) -> Result<Value, QmpError> {
    args.finish()?;
    Ok(shared
        .registry
        .live()
        .iter()
        .map(|e| memdev(&e.id, &e.snapshot()))
        .collect())
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

/// The properties QEMU's `Memdev` (one `query-memdev` element) reports besides the id,
/// each under its property name.
const MEMDEV: [&Prop; 8] = [
    &Common::SIZE,
    &Common::MERGE,
    &Common::DUMP,
    &Common::PREALLOC,
    &Common::SHARE,
    &Common::RESERVE,
    &Common::HOST_NODES,
    &Common::POLICY,
];

/// One `query-memdev` element, read through the library's property table.
fn memdev(id: &str, s: &Snapshot) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    for p in MEMDEV {
        if let Some(v) = p.get(&s.cfg) {
            o.insert(p.name.into(), report::value_json(v));
        }
    }
    Value::Object(o)
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

/// `__org.hostmem_memdev-save {"id", "file"}`: the backend's memory to a snapshot image
/// (docs/snapshot.md), while it stays in use. The backend is locked for the save, so no
/// other command changes it meanwhile; the guest's vCPUs are the VMM's to pause. A
/// failure (no such backend, a file that cannot be written) is an error reply and
/// leaves the backend as it was; the image is written beside its name and renamed
/// into place only when whole, as every save does.
fn save(shared: &Shared, mut args: Args) -> Result<Value, QmpError> {
    let id = args.string("id")?;
    let file = args.string("file")?;
    args.finish()?;
    let e = entry(shared, &id)?;
    let b = e.lock();
    let progress = hostmem::Progress::new();
    let opts = hostmem::snapshot::SaveOptions::default();
    let r = hostmem::snapshot::save(&b, &file, &opts, &progress)
        .map_err(|err| QmpError::generic(format!("saving '{id}' to {file}: {err}")))?;
    Ok(json!({
        "id": id,
        "file": file,
        "blocks": r.blocks,
        "data-blocks": r.data_blocks,
        "data-bytes": r.data_bytes,
        "hole-blocks": r.unread_holes + r.zero_holes,
        "seconds": r.secs,
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
