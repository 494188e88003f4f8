//! `hostmem vm --qmp SOCKET rebind ID NODES`: move one backend's resident pages to
//! NODES in QEMU's process, with a progress bar on a terminal, cancelled by SIGINT or
//! SIGTERM, and a report of what moved, what stayed and why, and what later faults do.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use hostmem::remote::{page_status_reason, RebindOptions, RemoteRebindReport};
use hostmem::size::format_size;
use hostmem::{NodeSet, Process, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::client::QmpClient;
use super::error::VmError;
use super::snapshot;

/// What the command did: the library's report, and the per-node pages after.
pub struct Outcome {
    /// The backend id.
    pub id: String,
    /// The target nodes.
    pub targets: NodeSet,
    /// The move.
    pub report: RemoteRebindReport,
    /// numa_maps' pages per node of the range after the move.
    pub after: Option<std::collections::BTreeMap<u32, u64>>,
}

/// Finds the backend, checks the nodes, moves; a bar on stderr when it is a terminal.
pub fn run(
    c: &mut QmpClient,
    process: &Process,
    id: &str,
    nodes: &str,
    options: RebindOptions,
    progress: Arc<Progress>,
) -> Result<Outcome, VmError> {
    let targets = NodeSet::parse(nodes).map_err(|e| VmError::BadNodes {
        text: nodes.into(),
        why: e.to_string(),
    })?;
    let snap = snapshot::take(c).map_err(|e| e.or_exited(process.pid()))?;
    let backend = snap.backend(id)?;
    let block = backend
        .block
        .as_ref()
        .ok_or_else(|| VmError::NotAttached { id: id.into() })?;
    let region = process
        .region(block.hva, block.used)
        .map_err(|e| VmError::from(e).or_exited(process.pid()))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "moving {msg} {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        ) {
            b.set_style(style);
        }
        b.set_message(id.to_string());
        b
    });
    let report = std::thread::scope(|s| {
        let (p, t) = (&progress, &targets);
        let worker = s.spawn(move || region.rebind(t, options, p));
        while !worker.is_finished() {
            if let Some(b) = &bar {
                b.set_length(progress.total());
                b.set_position(progress.done());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        worker.join()
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = match report {
        Ok(r) => r.map_err(|e| VmError::from(e).or_exited(process.pid()))?,
        Err(_) => {
            return Err(VmError::Reply {
                command: "rebind",
                why: "the move's thread panicked".into(),
            })
        }
    };
    let after = region
        .inspect()
        .ok()
        .and_then(|v| v.numa.ok())
        .map(|n| n.pages_per_node);
    Ok(Outcome {
        id: id.into(),
        targets,
        report,
        after,
    })
}

/// Failed pages per reason; the statuses without a name of their own add up under
/// `errno`.
fn failed_json(r: &RemoteRebindReport) -> Value {
    let mut m = std::collections::BTreeMap::<&str, u64>::new();
    for (&e, &n) in &r.failed {
        *m.entry(page_status_reason(e).0).or_default() += n;
    }
    json!(m)
}

/// The outcome as JSON (schema: `$defs/rebind` of docs/vm.schema.json, versioned by
/// the same `report::SCHEMA_VERSION` as every hostmem document).
pub fn json(pid: u32, o: &Outcome) -> Value {
    let r = &o.report;
    json!({
        "schema-version": crate::report::SCHEMA_VERSION,
        "id": o.id,
        "pid": pid,
        "targets": o.targets.iter().collect::<Vec<_>>(),
        "page-size": r.page_size,
        "resident-pages": r.resident_pages,
        "already-placed": r.already_placed,
        "moved": r.moved,
        "moved-bytes": r.bytes_moved(),
        "moved-per-node": r.moved_per_node.iter().map(|(n, p)| (n.to_string(), json!(p))).collect::<serde_json::Map<_, _>>(),
        "failed": failed_json(r),
        "skipped": r.skipped,
        "cancelled": r.cancelled,
        "seconds": r.seconds,
        "gib-per-sec": r.gib_per_sec(),
        "policy-after": r.policy_after,
        "pages-per-node-after": o.after.as_ref().map(|a| a.iter().map(|(n, p)| (n.to_string(), json!(p))).collect::<serde_json::Map<_, _>>()),
        "warnings": r.warnings,
    })
}

/// The outcome as text.
pub fn text(o: &Outcome) -> String {
    let r = &o.report;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: moved {} pages ({}) to node(s) {} in {:.3} s ({:.2} GiB/s); {} of {} resident pages were already in place",
        o.id,
        r.moved,
        format_size(r.bytes_moved()),
        o.targets,
        r.seconds,
        r.gib_per_sec(),
        r.already_placed,
        r.resident_pages
    );
    for (n, p) in &r.moved_per_node {
        let _ = writeln!(s, "    to node {n}: {p} pages");
    }
    for (&e, &n) in &r.failed {
        let (name, why) = page_status_reason(e);
        let _ = match name {
            "errno" => writeln!(s, "    stayed: {n} pages with status {e} ({why})"),
            _ => writeln!(s, "    stayed: {n} pages {name} ({why})"),
        };
    }
    if r.cancelled {
        let _ = writeln!(s, "    cancelled: {} pages not tried", r.skipped);
    }
    if let Some(after) = &o.after {
        let per: Vec<String> = after.iter().map(|(n, p)| format!("N{n}={p}")).collect();
        let _ = writeln!(s, "    pages per node now: {}", per.join(" "));
    }
    let _ = writeln!(
        s,
        "    later faults in the range follow its own policy: {}",
        r.policy_after
    );
    for w in &r.warnings {
        let _ = writeln!(s, "    warning: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_without_a_name_add_up_under_errno() {
        // 16 is the kernel's EBUSY; 1000 and 1001 are statuses with no name of their own.
        let r = RemoteRebindReport {
            failed: [(16, 3), (1000, 2), (1001, 5)].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(failed_json(&r), json!({"EBUSY": 3, "errno": 7}));
    }
}
