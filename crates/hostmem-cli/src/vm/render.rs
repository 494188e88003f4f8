//! A VM's backends as text and JSON: the kernel's view of each backend's RAM block in
//! QEMU's memory, rendered with the same pieces as `hostmem run`'s report
//! (`report::kernel_text`, `report::kernel_json`).

use std::fmt::Write as _;

use hostmem::size::format_size;
use hostmem::{KernelView, Process};
use serde_json::{json, Value};

use super::error::VmError;
use super::snapshot::{Snapshot, VmBackend};
use crate::report;

/// One backend with what the kernel says about its range (None: no RAM block).
pub struct Looked<'a> {
    /// The backend.
    pub backend: &'a VmBackend,
    /// The kernel's view of its block, or why it could not be read.
    pub view: Option<Result<KernelView, VmError>>,
}

/// Reads the kernel's view of every attached backend now.
pub fn look<'a>(process: &Process, snap: &'a Snapshot) -> Vec<Looked<'a>> {
    snap.backends
        .iter()
        .map(|b| Looked {
            backend: b,
            view: b.block.as_ref().map(|blk| {
                let region = process.region(blk.hva, blk.used)?;
                Ok(region.inspect()?)
            }),
        })
        .collect()
}

/// What the kernel's view contradicts in what QEMU was asked for.
pub fn notes(b: &VmBackend, v: &KernelView) -> Vec<String> {
    let mut notes = Vec::new();
    let size = b.requested["size"].as_u64().unwrap_or(0);
    if b.requested["prealloc"] == json!(true) && v.resident < size {
        notes.push(format!(
            "prealloc=on, but only {} of {} is resident",
            format_size(v.resident),
            format_size(size)
        ));
    }
    // KSM merges only private anonymous memory: share=on or hugetlb never gets mg.
    let private = b.requested["share"] == json!(false) && v.hugetlb == 0;
    if b.requested["merge"] == json!(true) && private && !v.has_flag("mg") {
        notes.push("merge=on, but VmFlags has no mg (KSM does not scan this range)".into());
    }
    if b.requested["dump"] == json!(false) && !v.has_flag("dd") {
        notes.push("dump=off, but VmFlags has no dd (it would be in a core dump)".into());
    }
    if let (Ok(numa), Some(asked)) = (&v.numa, b.requested["policy"].as_str()) {
        let kernel_mode = numa.policy.split([':', '=']).next().unwrap_or("");
        let asked_mode = match asked {
            "preferred" => "prefer",
            other => other,
        };
        if asked != "default" && kernel_mode != asked_mode {
            notes.push(format!(
                "QEMU was asked for policy {}, the kernel has {} for the range",
                b.requested_policy(),
                numa.policy
            ));
        }
    }
    notes
}

fn header(b: &VmBackend) -> String {
    let size = b.requested["size"].as_u64().map_or("?".into(), format_size);
    let page = b.block.as_ref().map_or(String::new(), |blk| {
        format!("  page {}", format_size(blk.page_size))
    });
    format!(
        "{}  {}  {}{}  requested policy {}{}\n",
        b.id,
        b.qom_type.as_deref().unwrap_or("memory-backend"),
        size,
        page,
        b.requested_policy(),
        if b.requested["prealloc"] == json!(true) {
            "  prealloc"
        } else {
            ""
        }
    )
}

/// The report as text.
pub fn text(pid: u32, version: &str, snap: &Snapshot, looked: &[Looked<'_>]) -> String {
    let mut s = format!("QEMU {version}, pid {pid}\n");
    for l in looked {
        s.push_str(&header(l.backend));
        match &l.view {
            None => s.push_str("    not attached to a RAM block: not guest memory\n"),
            Some(Err(e)) => {
                let _ = writeln!(s, "    kernel view unavailable: {e}");
            }
            Some(Ok(v)) => {
                s.push_str(&report::kernel_text(v));
                for n in notes(l.backend, v) {
                    let _ = writeln!(s, "    note: {n}");
                }
            }
        }
    }
    if !snap.unnamed_blocks.is_empty() {
        let _ = writeln!(
            s,
            "{} RAM block(s) with no name (unattached backends' memory; QEMU does not say whose): {}",
            snap.unnamed_blocks.len(),
            snap.unnamed_blocks
                .iter()
                .map(|b| format_size(b.used))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

/// One backend as JSON (schema: `$defs/backend` of docs/vm.schema.json).
pub fn backend_json(l: &Looked<'_>) -> Value {
    let b = l.backend;
    let mut o = json!({
        "id": b.id,
        "qom-type": b.qom_type,
        "requested": b.requested,
        "attached": b.block.is_some(),
        "ramblock": b.block.as_ref().map(|blk| json!({
            "name": blk.name,
            "host-addr": blk.hva,
            "length": blk.used,
            "max-length": blk.total,
            "page-size": blk.page_size,
        })),
        "kernel": null,
        "notes": [],
    });
    match &l.view {
        None => {}
        Some(Err(e)) => o["kernel"] = json!({"error": e.to_string()}),
        Some(Ok(v)) => {
            o["kernel"] = report::kernel_json(v);
            o["notes"] = json!(notes(b, v));
        }
    }
    o
}

/// The report as one JSON document (schema: `$defs/report` of docs/vm.schema.json,
/// versioned by the same `report::SCHEMA_VERSION` as `hostmem run --json`).
pub fn json(
    pid: u32,
    version: &super::client::QemuVersion,
    snap: &Snapshot,
    looked: &[Looked<'_>],
) -> Value {
    json!({
        "schema-version": report::SCHEMA_VERSION,
        "qemu": {"pid": pid, "version": version.to_string(), "package": version.package},
        "backends": looked.iter().map(backend_json).collect::<Vec<_>>(),
        "unnamed-ramblocks": snap.unnamed_blocks.iter().map(|b| json!({
            "host-addr": b.hva,
            "length": b.used,
            "page-size": b.page_size,
        })).collect::<Vec<_>>(),
    })
}
