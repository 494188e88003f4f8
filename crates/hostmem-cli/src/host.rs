//! `hostmem host`: the host as hostmem sees it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use hostmem::limits::{CgroupLimit, Known, MemoryRoom, Snapshot};
use hostmem::numa::Features;
use hostmem::size::format_size;
use hostmem::{HostTopology, Policy};
use serde_json::{json, Value};

pub const EXAMPLES: &str = "Examples:
  hostmem host            nodes, CPUs, memory, huge page pools, THP, KSM, kernel features,
                          and what each node and cgroup can still give guest memory
  hostmem host --json     the same as one JSON document";

#[derive(Args)]
pub struct HostArgs {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

fn room_json(r: &Known<MemoryRoom>) -> Value {
    match r {
        Ok(r) => json!({
            "available": r.available(), "total": r.total, "free": r.free, "file": r.file,
            "slab-reclaimable": r.slab_reclaimable, "kernel-reserve": r.reserve,
        }),
        Err(u) => json!({"unknown": u.to_string()}),
    }
}

fn cgroup_json(c: &Known<Option<CgroupLimit>>) -> Value {
    match c {
        Ok(Some(l)) => json!({
            "cgroup": l.cgroup, "dir": l.dir, "limit-file": l.max_file,
            "max": l.max, "current": l.current, "available": l.room(),
            "version": if l.version == hostmem::limits::CgroupVersion::V2 { 2 } else { 1 },
        }),
        Ok(None) => Value::Null,
        Err(u) => json!({"unknown": u.to_string()}),
    }
}

/// What guest memory can still get, per node, host-wide and per cgroup (null: no
/// cgroup limit). A node's `uncounted` is what the kernel may add to it beyond its
/// meminfo (0 when the nodes add up to the host; see `warnings`).
fn guest_memory_json(s: &Snapshot) -> Value {
    let node = |n: u32, r: &Known<MemoryRoom>| {
        let mut v = room_json(r);
        if let Some(o) = v.as_object_mut().filter(|o| o.contains_key("available")) {
            o.insert("uncounted".into(), json!(s.extra([n])));
        }
        v
    };
    let uncounted = s.uncounted.as_ref().map(|u| {
        json!({"host-total": u.host_total, "nodes-total": u.nodes_total,
               "host-free": u.host_free, "nodes-free": u.nodes_free})
    });
    json!({
        "nodes": s.nodes.iter().map(|(n, r)| (n.to_string(), node(*n, r))).collect::<serde_json::Map<_, _>>(),
        "host": room_json(&s.host),
        "memory-cgroup": cgroup_json(&s.memory_cgroup),
        "hugetlb-cgroups": s.hugetlb_cgroups.iter().map(|(p, c)| (p.to_string(), cgroup_json(c))).collect::<serde_json::Map<_, _>>(),
        "uncounted": uncounted,
        "warnings": guest_memory_warnings(s),
    })
}

/// Why figures of `s` are uncertain: per node that may get more than its meminfo
/// shows, with the numbers; then the hints (a balloon, offline memory blocks).
fn guest_memory_warnings(s: &Snapshot) -> Vec<String> {
    let nodes = s.nodes.iter().filter_map(|(n, _)| {
        let u = s.uncounted.as_ref().filter(|u| u.extra([*n]) > 0)?;
        Some(format!("node {n}: {}", u.why(&format!("node {n}"), &[*n])))
    });
    nodes.chain(s.hints.iter().map(|h| h.to_string())).collect()
}

pub fn to_json(t: &HostTopology) -> Value {
    let pools = |p: &[hostmem::numa::HugePool]| -> Value {
        p.iter()
            .map(|p| json!({"page-size": p.page_size, "total": p.total, "free": p.free, "reserved": p.reserved, "surplus": p.surplus}))
            .collect()
    };
    json!({
        "kernel": t.kernel_release,
        "features": features_json(&t.features),
        "possible-nodes": t.possible.iter().collect::<Vec<_>>(),
        "online-nodes": t.online.iter().collect::<Vec<_>>(),
        "nodes-with-memory": t.has_memory.iter().collect::<Vec<_>>(),
        "nodes-with-cpus": t.has_cpu.iter().collect::<Vec<_>>(),
        "nodes": t.nodes.iter().map(|n| json!({
            "id": n.id,
            "cpus": n.cpus,
            "mem-total": n.mem_total,
            "mem-free": n.mem_free,
            "huge-pages": pools(&n.huge_pools),
        })).collect::<Vec<_>>(),
        "huge-page-sizes": t.huge_page_sizes,
        "default-huge-page-size": t.default_huge_page_size,
        "huge-pages": pools(&t.huge_pools),
        "thp": t.thp,
        "ksm": t.ksm,
        "interleave-weights": t.interleave_weights.iter().map(|(n, w)| (n.to_string(), json!(w))).collect::<serde_json::Map<_, _>>(),
        "allowed-cpus": t.allowed_cpus,
        "guest-memory": guest_memory_json(&Snapshot::read(t.has_memory.iter(), &t.huge_page_sizes)),
    })
}

/// The probed kernel features: each policy's mode as get_mempolicy read it back after
/// mbind set it on a scratch page (null: mbind refused it).
fn features_json(f: &Features) -> Value {
    let modes: serde_json::Map<String, Value> = Policy::ALL
        .iter()
        .map(|&p| {
            (
                p.name().to_string(),
                json!(f.read_back(p).map(|m| m.name())),
            )
        })
        .collect();
    json!({
        "madv-populate-write": f.populate_write,
        "mpol-preferred-many": f.preferred_many,
        "mpol-weighted-interleave": f.weighted_interleave,
        "weighted-interleave-weights": f.interleave_weights,
        "mempolicy-modes": modes,
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn main(args: HostArgs) -> ExitCode {
    let t = HostTopology::read();
    let text = if args.json {
        format!("{}\n", to_json(&t))
    } else {
        host_text(&t)
    };
    // A reader that goes away early (`hostmem host | head`) is not an error of ours.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn room_text(r: &Known<MemoryRoom>) -> String {
    match r {
        Ok(r) => format!(
            "{} (free {} + file {} + reclaimable slab {} - kernel reserve {})",
            format_size(r.available()),
            format_size(r.free),
            format_size(r.file),
            format_size(r.slab_reclaimable),
            format_size(r.reserve)
        ),
        Err(u) => format!("unknown: {u}"),
    }
}

fn cgroup_text(c: &Known<Option<CgroupLimit>>) -> String {
    match c {
        Ok(Some(l)) => format!(
            "{} more in {} ({} {}, in use {})",
            format_size(l.room()),
            l.cgroup,
            l.max_file,
            format_size(l.max),
            format_size(l.current)
        ),
        Ok(None) => "no limit".to_string(),
        Err(u) => format!("unknown: {u}"),
    }
}

/// What guest memory can still get without swapping or the OOM killer.
fn guest_memory_text(snap: &Snapshot) -> String {
    let mut s = String::from(
        "available for guest memory:
",
    );
    for (n, r) in &snap.nodes {
        let extra = match snap.extra([*n]) {
            0 => String::new(),
            b => format!(" + up to {} not yet counted (uncertain)", format_size(b)),
        };
        let _ = writeln!(s, "  node {n}: {}{extra}", room_text(r));
    }
    let _ = writeln!(s, "  host: {}", room_text(&snap.host));
    let _ = writeln!(s, "  memory cgroup: {}", cgroup_text(&snap.memory_cgroup));
    for (p, c) in &snap.hugetlb_cgroups {
        let _ = writeln!(
            s,
            "  hugetlb cgroup, {} pages: {}",
            format_size(*p),
            cgroup_text(c)
        );
    }
    for w in guest_memory_warnings(snap) {
        let _ = writeln!(s, "  warning: {w}");
    }
    s
}

/// The host as text: kernel, probed features, nodes, pools, THP, KSM.
fn host_text(t: &HostTopology) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kernel {}", t.kernel_release);
    let f = &t.features;
    let _ = writeln!(
        s,
        "features (probed): MADV_POPULATE_WRITE {}, MPOL_PREFERRED_MANY {}, MPOL_WEIGHTED_INTERLEAVE {} (weights in sysfs: {})",
        yes(f.populate_write),
        yes(f.preferred_many),
        yes(f.weighted_interleave),
        yes(f.interleave_weights)
    );
    let (ok, refused): (Vec<Policy>, Vec<Policy>) =
        Policy::ALL.iter().partition(|&&p| f.supports(p));
    let names = |v: &[Policy]| v.iter().map(|p| p.name()).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        s,
        "policies mbind accepts: {}{}",
        names(&ok),
        if refused.is_empty() {
            String::new()
        } else {
            format!("; refused: {}", names(&refused))
        }
    );
    let _ = writeln!(
        s,
        "nodes: possible {}, online {}, with memory {}, with CPUs {}",
        t.possible, t.online, t.has_memory, t.has_cpu
    );
    for n in &t.nodes {
        let cpus = hostmem::NodeSet::from_iter(n.cpus.iter().map(|&c| c as u32));
        let _ = writeln!(
            s,
            "  node {}: cpus {}, memory {} ({} free)",
            n.id,
            if n.cpus.is_empty() {
                "none".to_string()
            } else {
                cpus.to_string()
            },
            format_size(n.mem_total),
            format_size(n.mem_free)
        );
        for p in &n.huge_pools {
            let _ = writeln!(
                s,
                "    {} pages: {} total, {} free",
                format_size(p.page_size),
                p.total,
                p.free
            );
        }
    }
    for p in &t.huge_pools {
        let _ = writeln!(
            s,
            "huge pages {}: {} total, {} free, {} reserved, {} surplus{}",
            format_size(p.page_size),
            p.total,
            p.free,
            p.reserved,
            p.surplus,
            if Some(p.page_size) == t.default_huge_page_size {
                " (default size)"
            } else {
                ""
            }
        );
    }
    let kv = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    s.push_str(&guest_memory_text(&Snapshot::read(
        t.has_memory.iter(),
        &t.huge_page_sizes,
    )));
    let _ = writeln!(s, "THP: {}", kv(&t.thp));
    let _ = writeln!(s, "KSM: {}", kv(&t.ksm));
    if !t.interleave_weights.is_empty() {
        let w: Vec<String> = t
            .interleave_weights
            .iter()
            .map(|(n, w)| format!("node{n}={w}"))
            .collect();
        let _ = writeln!(s, "weighted interleave: {}", w.join(" "));
    }
    s
}
