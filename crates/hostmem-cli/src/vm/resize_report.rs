//! A resize's outcome as text, as JSON, and, when it did not finish, the one-line
//! reason for stderr: both sides (the guest's plugged size, the host's resident bytes
//! of the memdev) and how long each took.

use std::fmt::Write as _;

use hostmem::size::format_size;
use serde_json::{json, Value};

use super::resize::{End, Outcome};

fn seconds(s: Option<f64>) -> String {
    s.map_or("not reached".into(), |s| format!("in {s:.2} s"))
}

/// The outcome as JSON (schema: `$defs/resize` of docs/vm.schema.json, versioned by
/// the same `report::SCHEMA_VERSION` as every hostmem document).
pub fn json(pid: u32, o: &Outcome) -> Value {
    let last = o.last();
    let (outcome, stalled) = match o.end {
        End::Done => ("done", None),
        End::Stalled(s) => ("stalled", Some(s)),
        End::Cancelled => ("cancelled", None),
    };
    json!({
        "schema-version": crate::report::SCHEMA_VERSION,
        "device": o.device,
        "memdev": o.before.memdev,
        "pid": pid,
        "block-size": o.before.block_size,
        "max-size": o.before.max,
        "node": o.before.node,
        "prealloc": o.prealloc,
        "reserve": o.reserve,
        "page-size": o.page_size,
        "before": {
            "requested-size": o.before.requested,
            "plugged-size": o.before.plugged,
            "resident-bytes": o.resident_before,
        },
        "requested-size": o.target,
        "outcome": outcome,
        "stalled-seconds": stalled,
        "guest": {
            "plugged-size": last.plugged,
            "reached": o.guest_seconds.is_some(),
            "seconds": o.guest_seconds,
        },
        "host": {
            "resident-bytes": o.host.resident,
            "thp-bytes": o.host.thp,
            "hugetlb-bytes": o.host.hugetlb,
            "followed": o.host_seconds.is_some(),
            "seconds": o.host_seconds,
        },
        "timeline": o.timeline.iter().map(|s| json!({
            "seconds": s.seconds,
            "plugged-size": s.plugged,
            "resident-bytes": s.resident,
        })).collect::<Vec<_>>(),
        "warnings": o.warnings,
    })
}

/// The outcome as text.
pub fn text(o: &Outcome) -> String {
    let last = o.last();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} (virtio-mem, memdev {}, block {}, maximum {}): requested {} -> {}",
        o.device,
        o.before.memdev,
        format_size(o.before.block_size),
        format_size(o.before.max),
        format_size(o.before.requested),
        format_size(o.target)
    );
    let _ = writeln!(
        s,
        "    guest: plugged {} of {} ({} before), {}",
        format_size(last.plugged),
        format_size(o.target),
        format_size(o.before.plugged),
        seconds(o.guest_seconds)
    );
    let relation = if o.prealloc {
        "equal to"
    } else {
        "no more than"
    };
    let _ = writeln!(
        s,
        "    host:  memdev resident {} (THP {}, huge pages {}; {} before), {} the request: {}",
        format_size(o.host.resident),
        format_size(o.host.thp),
        format_size(o.host.hugetlb),
        format_size(o.resident_before),
        relation,
        seconds(o.host_seconds)
    );
    match o.end {
        End::Done => {}
        End::Stalled(q) => {
            let _ = writeln!(s, "    stalled: neither side moved for {q:.1} s");
        }
        End::Cancelled => {
            let _ = writeln!(
                s,
                "    cancelled (requested-size stays {})",
                format_size(o.target)
            );
        }
    }
    for w in &o.warnings {
        let _ = writeln!(s, "    warning: {w}");
    }
    s
}

/// Why the resize did not finish, for stderr; None when it did.
pub fn failure(o: &Outcome) -> Option<String> {
    let last = o.last();
    let quiet = match o.end {
        End::Done => return None,
        End::Cancelled => {
            return Some(format!(
                "resize of {} cancelled with {} plugged of {} requested (requested-size stays)",
                o.device,
                format_size(last.plugged),
                format_size(o.target)
            ))
        }
        End::Stalled(q) => q,
    };
    Some(if last.plugged != o.target {
        let hint = if o.timeline.len() <= 1 {
            "; the guest did not move at all: does it have the virtio_mem driver and memory \
             onlining (memhp_default_state, /sys/devices/system/memory/auto_online_blocks)?"
        } else if last.plugged < o.target {
            "; QEMU refuses to plug a block it cannot preallocate (prealloc=on: a short huge \
             page pool, a memory limit), and the guest asks again later on its own"
        } else {
            "; a guest that cannot free memory to unplug asks again later on its own"
        };
        format!(
            "{}: the guest plugged {} of the {} requested and nothing moved for {quiet:.1} s \
             (requested-size stays {}; `hostmem vm` shows where it is){hint}",
            o.device,
            format_size(last.plugged),
            format_size(o.target),
            format_size(o.target),
        )
    } else {
        format!(
            "{}: the guest plugged {}, but memdev {} has {} resident ({} expected with \
             prealloc={}) and nothing moved for {quiet:.1} s",
            o.device,
            format_size(last.plugged),
            o.before.memdev,
            format_size(o.host.resident),
            if o.prealloc {
                "exactly that"
            } else {
                "no more than that"
            },
            if o.prealloc { "on" } else { "off" },
        )
    })
}
