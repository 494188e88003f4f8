//! A VM's backends as text and JSON: the kernel's view of each backend's RAM block in
//! QEMU's memory, rendered with the same pieces as `hostmem run`'s report
//! (`report::kernel_text`, `report::kernel_json`).

use std::fmt::Write as _;

use hostmem::size::format_size;
use hostmem::{KernelView, Process};
use serde_json::{json, Value};

use super::error::VmError;
use super::snapshot::{Snapshot, VmBackend};
use super::virtio_mem::{self, VirtioMem};
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
    // QEMU discards a virtio-mem block when the guest unplugs it: more resident than
    // plugged is memory the host did not get back (or an unplug in flight).
    for d in &b.virtio_mem {
        if v.resident > d.plugged {
            notes.push(format!(
                "virtio-mem {} has {} plugged, but {} of its memdev is resident",
                d.id.as_deref().unwrap_or("(no id)"),
                format_size(d.plugged),
                format_size(v.resident)
            ));
        }
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

/// A virtio-mem device under its memdev: the guest's side of the memory.
fn virtio_mem_line(d: &VirtioMem) -> String {
    format!(
        "    virtio-mem {}: plugged {} of {} requested, maximum {}, block {}, guest node {}\n",
        d.id.as_deref().unwrap_or("(no id)"),
        format_size(d.plugged),
        format_size(d.requested),
        format_size(d.max),
        format_size(d.block_size),
        d.node
    )
}

/// The report as text.
pub fn text(pid: u32, version: &str, snap: &Snapshot, looked: &[Looked<'_>]) -> String {
    let mut s = format!("QEMU {version}, pid {pid}\n");
    for l in looked {
        s.push_str(&header(l.backend));
        for d in &l.backend.virtio_mem {
            s.push_str(&virtio_mem_line(d));
        }
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
        "virtio-mem": b.virtio_mem.iter().map(virtio_mem::json).collect::<Vec<_>>(),
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

/// Each note read where the kernel's view contradicts what QEMU was asked for, and
/// not read where it agrees: through `notes`, the text report and the JSON report.
#[cfg(test)]
mod tests {
    use hostmem::inspect::{NumaView, Unknown};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// What query-memdev says of a 64 MiB backend QEMU made as asked: no prealloc,
    /// private, merge and dump on (QEMU's machine defaults), policy default.
    fn asked() -> Value {
        json!({"id": "m", "size": 64 * MIB, "prealloc": false, "share": false,
               "merge": true, "dump": true, "policy": "default"})
    }

    fn backend(requested: Value) -> VmBackend {
        VmBackend {
            id: "m".into(),
            qom_type: Some("memory-backend-ram".into()),
            requested,
            block: None,
            virtio_mem: Vec::new(),
        }
    }

    /// The kernel's view of a fully resident private range with mg and dd set and
    /// numa_maps policy `policy`.
    fn kernel(policy: &str) -> KernelView {
        KernelView {
            vmas: 1,
            vmflags: ["rd", "wr", "mr", "mw", "me", "ac", "mg"]
                .map(String::from)
                .to_vec(),
            size: 64 * MIB,
            resident: 64 * MIB,
            thp: 0,
            hugetlb: 0,
            page_size: 4096,
            numa: Ok(NumaView {
                pages_per_node: [(0, 16384)].into(),
                page_size: 4096,
                policy: policy.into(),
            }),
            mempolicy: Err(Unknown {
                what: "get_mempolicy".into(),
                reason: "not asked in this test".into(),
            }),
        }
    }

    fn without(mut v: KernelView, flag: &str) -> KernelView {
        v.vmflags.retain(|f| f != flag);
        v
    }

    /// `asked()` with `changes` over it.
    fn asking(changes: Value) -> Value {
        let mut r = asked();
        for (k, v) in changes.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    /// The notes of one backend three ways: `notes`, the text report's `note:` lines and
    /// the JSON report's `notes`; all three must agree.
    fn read_notes(requested: Value, v: KernelView) -> Vec<String> {
        let b = backend(requested);
        let direct = notes(&b, &v);
        let looked = [Looked {
            backend: &b,
            view: Some(Ok(v)),
        }];
        let snap = Snapshot {
            backends: vec![b.clone()],
            unnamed_blocks: Vec::new(),
            devices: Default::default(),
        };
        let text = text(1, "10.0.0", &snap, &looked);
        let in_text: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("    note: "))
            .map(String::from)
            .collect();
        let in_json: Vec<String> =
            serde_json::from_value(backend_json(&looked[0])["notes"].clone()).unwrap();
        assert_eq!(in_text, direct, "text report:\n{text}");
        assert_eq!(in_json, direct, "JSON report");
        direct
    }

    /// Reads no note for `requested` and `v`; `why` says why none is due.
    fn no_note(requested: Value, v: KernelView, why: &str) {
        assert_eq!(read_notes(requested, v), Vec::<String>::new(), "{why}");
    }

    #[test]
    fn a_backend_the_kernel_agrees_with_has_no_note() {
        no_note(asked(), kernel("default"), "made as asked");
        let bound = asking(json!({"policy": "bind", "host-nodes": [0], "prealloc": true}));
        no_note(bound, kernel("bind:0"), "bound and preallocated as asked");
    }

    #[test]
    fn prealloc_on_with_part_of_the_range_resident_is_noted() {
        let pre = asking(json!({"prealloc": true}));
        let mut v = kernel("default");
        v.resident = 60 * MIB;
        assert_eq!(
            read_notes(pre.clone(), v.clone()),
            ["prealloc=on, but only 60 MiB of 64 MiB is resident"]
        );
        no_note(asked(), v, "prealloc=off: pages come on first touch");
        no_note(pre, kernel("default"), "all resident");
    }

    #[test]
    fn merge_on_without_mg_is_noted_only_for_private_non_hugetlb_memory() {
        const NOTE: &str = "merge=on, but VmFlags has no mg (KSM does not scan this range)";
        let no_mg = without(kernel("default"), "mg");
        assert_eq!(read_notes(asked(), no_mg.clone()), [NOTE]);
        no_note(asked(), kernel("default"), "mg set");
        no_note(asking(json!({"merge": false})), no_mg.clone(), "merge=off");
        no_note(
            asking(json!({"share": true})),
            no_mg.clone(),
            "share=on: KSM never merges it",
        );
        let mut huge = no_mg;
        huge.hugetlb = 64 * MIB;
        no_note(asked(), huge, "hugetlb: KSM never merges it");
    }

    #[test]
    fn dump_off_without_dd_is_noted() {
        let off = asking(json!({"dump": false}));
        let mut dd = kernel("default");
        dd.vmflags.push("dd".into());
        assert_eq!(
            read_notes(off.clone(), kernel("default")),
            ["dump=off, but VmFlags has no dd (it would be in a core dump)"]
        );
        no_note(off, dd.clone(), "dd set");
        no_note(asked(), dd, "dump=on: dd or not, nothing was asked");
    }

    #[test]
    fn a_kernel_policy_other_than_the_requested_one_is_noted() {
        let bind = asking(json!({"policy": "bind", "host-nodes": [0]}));
        assert_eq!(
            read_notes(bind.clone(), kernel("interleave:0")),
            ["QEMU was asked for policy bind:0, the kernel has interleave:0 for the range"]
        );
        no_note(
            bind.clone(),
            kernel("bind=static:0"),
            "mode flags after '=' are the same mode",
        );
        let preferred = asking(json!({"policy": "preferred", "host-nodes": [1]}));
        no_note(
            preferred.clone(),
            kernel("prefer:1"),
            "numa_maps spells preferred 'prefer'",
        );
        assert_eq!(
            read_notes(preferred, kernel("default")),
            ["QEMU was asked for policy preferred:1, the kernel has default for the range"]
        );
        no_note(
            asked(),
            kernel("interleave:0-1"),
            "policy=default: QEMU sets no policy, so none contradicts it",
        );
        let mut unknown = kernel("bind:0");
        unknown.numa = Err(Unknown {
            what: "/proc/1/numa_maps".into(),
            reason: "No such file or directory".into(),
        });
        no_note(bind, unknown, "no numa_maps: nothing to contradict");
    }

    #[test]
    fn a_virtio_mem_memdev_with_more_resident_than_plugged_is_noted() {
        let device = |plugged| VirtioMem {
            id: Some("vm0".into()),
            memdev: "m".into(),
            plugged,
            requested: plugged,
            max: 64 * MIB,
            block_size: 2 * MIB,
            node: 0,
            memaddr: 1 << 32,
        };
        let with = |plugged| {
            let mut b = backend(asked());
            b.virtio_mem.push(device(plugged));
            b
        };
        let notes_of = |b: &VirtioMem, v: KernelView| {
            let mut backend = with(b.plugged);
            backend.virtio_mem = vec![b.clone()];
            notes(&backend, &v)
        };
        assert_eq!(
            notes_of(&device(32 * MIB), kernel("default")),
            ["virtio-mem vm0 has 32 MiB plugged, but 64 MiB of its memdev is resident"]
        );
        assert!(notes_of(&device(64 * MIB), kernel("default")).is_empty());
        let b = with(64 * MIB);
        let looked = [Looked {
            backend: &b,
            view: None,
        }];
        let snap = Snapshot {
            backends: vec![b.clone()],
            unnamed_blocks: Vec::new(),
            devices: Default::default(),
        };
        let text = text(1, "10.0.0", &snap, &looked);
        assert!(
            text.contains("    virtio-mem vm0: plugged 64 MiB of 64 MiB requested, maximum 64 MiB, block 2 MiB, guest node 0\n"),
            "{text}"
        );
        assert_eq!(
            backend_json(&looked[0])["virtio-mem"][0]["plugged-size"],
            64 * MIB
        );
    }

    #[test]
    fn several_notes_of_one_backend_are_all_read_in_order() {
        let all = asking(json!({"prealloc": true, "dump": false, "policy": "bind",
                               "host-nodes": [0]}));
        let mut v = without(kernel("prefer:0"), "mg");
        v.resident = 0;
        assert_eq!(
            read_notes(all, v),
            [
                "prealloc=on, but only 0 B of 64 MiB is resident",
                "merge=on, but VmFlags has no mg (KSM does not scan this range)",
                "dump=off, but VmFlags has no dd (it would be in a core dump)",
                "QEMU was asked for policy bind:0, the kernel has prefer:0 for the range",
            ]
        );
    }
}
