//! The per-backend report (README: every claim is read back from the kernel): everything in it is read back from the kernel
//! at report time, except the requested settings it compares them with.

use std::fmt::Write as _;

use hostmem::size::format_size;
use hostmem::{Backend, KernelView, PropValue};
use serde_json::{json, Value};

/// Version of the shape of every JSON document hostmem prints (`docs/report.schema.json`
/// for `hostmem run`, `docs/vm.schema.json` for `hostmem vm`; both `$id`s end in it):
/// raised when a member is removed, renamed or changes type in either, so consumers can
/// refuse a document they do not know. One number for all, so a consumer of both
/// commands checks one.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON document `--json` prints: the schema version and one entry per backend.
pub fn document(backends: Vec<Value>) -> Value {
    json!({"schema-version": SCHEMA_VERSION, "backends": backends})
}

/// Things the kernel view contradicts or qualifies in what was asked for.
pub fn notes(b: &Backend, v: &KernelView) -> Vec<String> {
    let cfg = &b.config().common;
    let mut notes = Vec::new();
    if cfg.merge && !v.has_flag("mg") {
        if b.mergeable_kind() {
            notes.push(
                "merge=on did not take: the kernel refused MADV_MERGEABLE (no KSM?)".to_string(),
            );
        } else {
            notes.push(
                "merge=on has no effect: KSM merges only private anonymous memory".to_string(),
            );
        }
    }
    if cfg.merge && v.has_flag("mg") {
        let run = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default();
        if run.trim() != "1" {
            notes.push(format!(
                "marked mergeable, but KSM is not running (/sys/kernel/mm/ksm/run = {})",
                run.trim()
            ));
        }
    }
    if !cfg.dump && !v.has_flag("dd") {
        notes.push("dump=off did not take: the kernel does not show dd".to_string());
    }
    notes.extend(b.notes().iter().cloned());
    notes
}

/// A property value as JSON: node lists as arrays, policies as names, sizes as numbers.
pub fn value_json(v: PropValue) -> Value {
    match v {
        PropValue::Bool(b) => json!(b),
        PropValue::Int(i) => json!(i),
        // JSON strings are UTF-8; a path that is not is shown with replacement marks.
        PropValue::Path(p) => json!(p.to_string_lossy()),
        PropValue::Nodes(n) => json!(n.iter().collect::<Vec<_>>()),
        PropValue::Policy(p) => json!(p.name()),
        PropValue::OnOffAuto(o) => json!(o.name()),
        // A link reads as the object's canonical path, or "" when unset (like QEMU).
        PropValue::Link(l) => json!(l.to_string()),
        // A value type added later: its text form.
        other => json!(other.to_string()),
    }
}

/// The kernel's policy for a range as JSON, or why it is unknown.
pub fn mempolicy_json(v: &KernelView) -> Value {
    match &v.mempolicy {
        Ok(p) => json!({"mode": p.mode.name(), "nodes": p.nodes.iter().collect::<Vec<_>>()}),
        Err(u) => json!({"unknown": u.to_string()}),
    }
}

/// The kernel part of a report. What the kernel did not say is null, with the reason
/// under `numa-unknown`, never a guess.
pub fn kernel_json(v: &KernelView) -> Value {
    let mut o = json!({
        "vmflags": v.vmflags,
        "resident-bytes": v.resident,
        "thp-bytes": v.thp,
        "hugetlb-bytes": v.hugetlb,
        "kernel-page-size": v.page_size,
        "mempolicy": mempolicy_json(v),
        "vmas": v.vmas,
    });
    match &v.numa {
        Ok(n) => {
            let per_node: serde_json::Map<String, Value> = n
                .pages_per_node
                .iter()
                .map(|(n, p)| (n.to_string(), json!(p)))
                .collect();
            o["pages-per-node"] = json!(per_node);
            o["pages-per-node-page-size"] = json!(n.page_size);
            o["numa-maps-policy"] = json!(n.policy);
        }
        Err(u) => {
            o["pages-per-node"] = Value::Null;
            o["pages-per-node-page-size"] = Value::Null;
            o["numa-maps-policy"] = Value::Null;
            o["numa-unknown"] = json!(u.to_string());
        }
    }
    o
}

/// One backend as JSON: every property as set, plus what the kernel says now.
pub fn backend_json(b: &Backend) -> Value {
    let mut o = json!({
        "id": b.id(),
        "qom-type": b.kind().qom_type(),
        "host-addr": b.host_addr(),
        "page-size": b.page_size(),
    });
    for p in b.properties() {
        if let Ok(v) = b.get(p.name) {
            o[p.name] = value_json(v);
        }
    }
    let stats = b.prealloc_stats();
    o["prealloc-seconds"] = json!(stats.map(|s| s.seconds));
    o["prealloc-gib-per-sec"] = json!(stats.map(|s| s.gib_per_sec()));
    o["prealloc-threads-used"] = json!(stats.map(|s| s.threads));
    match b.inspect() {
        Ok(v) => {
            o["notes"] = json!(notes(b, &v));
            o["kernel"] = kernel_json(&v);
        }
        Err(e) => o["kernel"] = json!({"error": e.to_string()}),
    }
    o
}

const BAR: usize = 40;

/// Per-node pages as bars: people compare lengths faster than numbers.
pub fn node_bars(v: &KernelView) -> String {
    let numa = match &v.numa {
        Ok(n) => n,
        Err(u) => return format!("    pages per node {u}\n"),
    };
    let total: u64 = numa.pages_per_node.values().sum();
    let mut s = String::new();
    for (n, &pages) in &numa.pages_per_node {
        let filled = if total == 0 {
            0
        } else {
            ((pages as f64 / total as f64) * BAR as f64).round() as usize
        };
        let pct = if total == 0 {
            0.0
        } else {
            pages as f64 * 100.0 / total as f64
        };
        let _ = writeln!(
            s,
            "    node {n:<3} [{}{}] {pages:>10} pages  {:>10}  {pct:5.1}%",
            "#".repeat(filled),
            ".".repeat(BAR - filled),
            format_size(pages * numa.page_size)
        );
    }
    if numa.pages_per_node.is_empty() {
        s.push_str("    (no pages resident yet)\n");
    }
    s
}

/// The kernel's view of a range as text: resident bytes with the THP or huge page
/// part, the kernel's policy, VmFlags and the per-node bars. Used for our own backends
/// and for another process's (`hostmem vm`).
pub fn kernel_text(v: &KernelView) -> String {
    let mut s = String::new();
    let mut huge = String::new();
    if v.thp > 0 {
        huge = format!(" (THP {})", format_size(v.thp));
    } else if v.hugetlb > 0 {
        huge = format!(" (hugetlb {})", format_size(v.hugetlb));
    }
    let _ = writeln!(
        s,
        "    resident {}{}  kernel policy {}",
        format_size(v.resident),
        huge,
        v.mempolicy_text()
    );
    let _ = writeln!(s, "    VmFlags: {}", v.vmflags.join(" "));
    s.push_str(&node_bars(v));
    s
}

/// One backend as text.
pub fn backend_text(b: &Backend) -> String {
    let cfg = &b.config().common;
    let mut s = String::new();
    let page = b.page_size().map_or("?".into(), format_size);
    let nodes = if cfg.host_nodes.is_empty() {
        String::new()
    } else {
        format!(":{}", cfg.host_nodes)
    };
    let _ = writeln!(
        s,
        "{}  {}  {}  page {}  policy {}{}",
        b.id(),
        b.kind().qom_type(),
        format_size(cfg.size),
        page,
        cfg.policy,
        nodes
    );
    match b.inspect() {
        Ok(v) => {
            s.push_str(&kernel_text(&v));
            for n in notes(b, &v) {
                let _ = writeln!(s, "    note: {n}");
            }
        }
        Err(e) => {
            let _ = writeln!(s, "    kernel view unavailable: {e}");
        }
    }
    if let Some(st) = b.prealloc_stats() {
        let _ = writeln!(
            s,
            "    prealloc {:.3} s, {:.2} GiB/s, {} threads",
            st.seconds,
            st.gib_per_sec(),
            st.threads
        );
    }
    s
}

/// One backend's pre-flight verdict as text: what it needs, what each node it may use
/// has free now, and every reason it would fail.
pub fn check_text(c: &hostmem::preflight::BackendCheck) -> String {
    let mut s = String::new();
    let page = c.page_size.map_or("?".into(), format_size);
    let _ = writeln!(
        s,
        "{}  {}  needs {}  page {}{}  policy {}  {}",
        c.id,
        c.kind.qom_type(),
        format_size(c.bytes),
        page,
        if c.hugetlb { " (huge page pool)" } else { "" },
        c.policy,
        if c.fits() { "fits" } else { "WOULD FAIL" }
    );
    for n in &c.nodes {
        let huge = match (n.huge_free, c.page_size) {
            (Some(free), Some(p)) => format!("  {free} free {} huge pages", format_size(p)),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "    node {:<3} {} free{huge}",
            n.node,
            format_size(n.mem_free)
        );
    }
    for l in &c.limits {
        let room = match &l.available {
            Ok(Some(b)) => format!("{} available", format_size(*b)),
            Ok(None) => "no limit".to_string(),
            Err(u) => format!("unknown ({u})"),
        };
        let _ = writeln!(s, "    limit {}: {room}", l.limit);
        if let Some(u) = &l.uncertain {
            let _ = writeln!(s, "      uncertain: {u}");
        }
    }
    for p in &c.problems {
        let _ = writeln!(s, "    would fail: {p}");
    }
    for w in &c.warnings {
        let _ = writeln!(s, "    warning: {w}");
    }
    s
}

/// A limit's room as JSON: bytes, null for no limit, or `{"unknown": reason}`.
pub fn room_json(k: &hostmem::limits::Known<Option<u64>>) -> Value {
    match k {
        Ok(v) => json!(v),
        Err(u) => json!({"unknown": u.to_string()}),
    }
}

/// One backend's pre-flight verdict as JSON.
pub fn check_json(c: &hostmem::preflight::BackendCheck) -> Value {
    json!({
        "id": c.id,
        "qom-type": c.kind.qom_type(),
        "bytes": c.bytes,
        "page-size": c.page_size,
        "hugetlb": c.hugetlb,
        "policy": c.policy.name(),
        "fits": c.fits(),
        "nodes": c.nodes.iter().map(|n| json!({
            "node": n.node,
            "mem-free": n.mem_free,
            "huge-pages-free": n.huge_free,
        })).collect::<Vec<_>>(),
        "limits": c.limits.iter().map(|l| json!({
            "limit": l.limit,
            "available": room_json(&l.available),
            "uncertain": l.uncertain,
        })).collect::<Vec<_>>(),
        "problems": c.problems,
        "warnings": c.warnings,
    })
}
