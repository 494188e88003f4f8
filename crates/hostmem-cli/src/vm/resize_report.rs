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
            "{}: the guest plugged {}, but memdev {} has {} resident (with prealloc={} it must \
             be {} what is plugged) and nothing moved for {quiet:.1} s",
            o.device,
            format_size(last.plugged),
            o.before.memdev,
            format_size(o.host.resident),
            if o.prealloc { "on" } else { "off" },
            if o.prealloc {
                "exactly"
            } else {
                "no more than"
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use hostmem::inspect::Unknown;
    use hostmem::KernelView;

    use super::super::resize::Sample;
    use super::super::virtio_mem::VirtioMem;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn unknown(what: &str) -> Unknown {
        Unknown {
            what: what.into(),
            reason: "not read in this test".into(),
        }
    }

    /// A resize of vm0 from `from` to `target` whose looks saw `steps` (plugged,
    /// resident), ending as `end`; each side "got there" at 1.5 s when its last look is
    /// the target.
    fn outcome(from: u64, target: u64, steps: &[(u64, u64)], end: End) -> Outcome {
        let last = steps.last().copied().unwrap_or((from, from));
        let reached = |v: u64| (v == target).then_some(1.5);
        Outcome {
            before: VirtioMem {
                id: Some("vm0".into()),
                memdev: "mem-vm0".into(),
                plugged: from,
                requested: from,
                max: 1024 * MIB,
                block_size: 2 * MIB,
                node: 0,
                memaddr: 1 << 32,
            },
            device: "vm0".into(),
            resident_before: from,
            prealloc: true,
            reserve: Some(false),
            page_size: 4096,
            target,
            timeline: steps
                .iter()
                .enumerate()
                .map(|(i, &(plugged, resident))| Sample {
                    seconds: i as f64,
                    plugged,
                    resident,
                })
                .collect(),
            host: KernelView {
                vmas: 1,
                vmflags: Vec::new(),
                size: 1024 * MIB,
                resident: last.1,
                thp: last.1,
                hugetlb: 0,
                page_size: 4096,
                numa: Err(unknown("numa_maps")),
                mempolicy: Err(unknown("get_mempolicy")),
            },
            guest_seconds: reached(last.0),
            host_seconds: reached(last.1),
            end,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_finished_resize_has_no_failure_and_says_both_sides() {
        let o = outcome(0, 256 * MIB, &[(0, 0), (256 * MIB, 256 * MIB)], End::Done);
        assert_eq!(failure(&o), None);
        let t = text(&o);
        assert!(
            t.contains("guest: plugged 256 MiB of 256 MiB (0 B before), in 1.50 s"),
            "{t}"
        );
        assert!(t.contains("equal to the request: in 1.50 s"), "{t}");
        let j = json(7, &o);
        assert_eq!(j["outcome"], "done");
        assert!(j["stalled-seconds"].is_null());
        assert_eq!(j["timeline"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_stall_says_where_each_side_got_and_why_it_may_have_stopped() {
        const G: u64 = 256 * MIB;
        let stalled = |from, to, steps: &[(u64, u64)]| {
            let o = outcome(from, to, steps, End::Stalled(30.0));
            (failure(&o).unwrap_or_default(), json(7, &o))
        };
        let (never, _) = stalled(0, G, &[(0, 0)]);
        assert!(
            never.starts_with(
                "vm0: the guest plugged 0 B of the 256 MiB requested and nothing moved for 30.0 s"
            ) && never.contains("did not move at all"),
            "{never}"
        );
        let (short, _) = stalled(0, G, &[(0, 0), (G / 2, G / 2)]);
        assert!(short.contains("cannot preallocate"), "{short}");
        let (stuck, _) = stalled(G, 0, &[(G, G), (G / 2, G / 2)]);
        assert!(stuck.contains("cannot free memory to unplug"), "{stuck}");
        let (behind, doc) = stalled(0, G, &[(0, 0), (G, 192 * MIB)]);
        assert_eq!(
            behind,
            "vm0: the guest plugged 256 MiB, but memdev mem-vm0 has 192 MiB resident (with \
             prealloc=on it must be exactly what is plugged) and nothing moved for 30.0 s"
        );
        assert_eq!(doc["outcome"], "stalled");
        assert_eq!(doc["host"]["followed"], false);
        assert_eq!(doc["guest"]["reached"], true);
    }
}
