//! Live rebinding and prealloc threads on the bound nodes' CPUs.

use hostmem::numa::KernelMode;
use hostmem::{Backend, HostTopology, Kind, Policy};

use crate::common::*;

pub fn live_rebind(t: &Topo) -> Check {
    let (from, to) = (t.mem[0], t.mem[2]);
    let mut b = ram("rb", 128 * MIB, Policy::Bind, &from.to_string())?;
    let before = placement(&b)?;
    let r = b
        .rebind(Policy::Bind, nodes(&to.to_string()))
        .map_err(|e| e.to_string())?;
    let after = placement(&b)?;
    let total: u64 = after.values().sum();
    let on = after.get(&to).copied().unwrap_or(0);
    let frac = on as f64 / total.max(1) as f64;
    ensure(frac >= 0.99, || {
        format!("only {:.2} % on node {to}: {}", frac * 100.0, dist(&after))
    })?;
    // The report (move_pages inside the library) against the kernel's other account
    // of the same pages, numa_maps.
    let addr = b.host_addr().ok_or("no host address")?;
    let kernel = own_numa_maps(addr)?;
    let on_numa = kernel.get(&to).copied().unwrap_or(0);
    ensure(
        r.pages_on_target == on_numa
            && r.pages_present == kernel.values().sum::<u64>()
            && r.pages_present == 128 * MIB / 4096,
        || {
            format!(
                "rebind report {} on node {to} of {} present, numa_maps {}",
                r.pages_on_target,
                r.pages_present,
                dist(&kernel)
            )
        },
    )?;
    let v = b.inspect().map_err(|e| e.to_string())?;
    ensure(
        v.mempolicy_mode() == Some(KernelMode::Bind)
            && v.mempolicy_nodes() == Some(&nodes(&to.to_string())),
        || format!("policy after rebind: {}", v.mempolicy_text()),
    )?;
    let numa_policy = own_numa_maps_policy(addr)?;
    ensure(numa_policy == format!("bind:{to}"), || {
        format!("numa_maps policy after rebind: {numa_policy}")
    })?;
    Ok(format!(
        "node {from} -> {to}: before {} after {} ({:.2} % on target, {:.3} s)",
        dist(&before),
        dist(&after),
        frac * 100.0,
        r.seconds
    ))
}

/// A rebind that fails part-way: the target node is nearly full (a filler backend bound
/// to it), so the kernel applies the new policy, moves what fits and returns EIO for
/// the rest (MPOL_MF_STRICT). The backend must put its old policy back, so its settings
/// and get_mempolicy agree again; the pages that moved stay moved.
pub fn failed_rebind_keeps_settings_and_kernel_agreeing(t: &Topo) -> Check {
    with_thp("never", || failed_rebind(t))
}

pub fn failed_rebind(t: &Topo) -> Check {
    let from = t.mem[0];
    // The smallest memory node is the one to fill.
    let to = *t
        .mem
        .iter()
        .filter(|&&n| n != from)
        .min_by_key(|&&n| t.host.node(n).map_or(u64::MAX, |i| i.mem_total))
        .ok_or("need a second memory node")?;
    let free = HostTopology::read().node(to).map_or(0, |i| i.mem_free);
    // Leave 48 MiB free on the target: far above its min watermark (no OOM), far below
    // the 128 MiB the rebind wants to move there.
    let fill = (free.saturating_sub(48 * MIB)) / (2 * MIB) * (2 * MIB);
    ensure(fill > 0, || format!("node {to} has only {free} bytes free"))?;
    let _filler = ram("fill", fill, Policy::Bind, &to.to_string())?;
    let mut b = ram("mv", 128 * MIB, Policy::Bind, &from.to_string())?;
    let err = match b.rebind(Policy::Bind, nodes(&to.to_string())) {
        Ok(r) => {
            return Err(format!(
            "rebind into a full node succeeded: {} of {} pages on target, {} absent, other {:?}",
            r.pages_on_target, r.pages_present, r.pages_absent, r.pages_other
        ))
        }
        Err(e) => e.to_string(),
    };
    let after = placement(&b)?;
    let v = b.inspect().map_err(|e| e.to_string())?;
    // The name's promise: the backend's settings (what query-memdev shows) put back,
    // and the kernel's policy with them.
    let cfg = &b.config().common;
    ensure(
        cfg.policy == Policy::Bind && cfg.host_nodes == nodes(&from.to_string()),
        || {
            format!(
                "settings say {} {} after: {err}",
                cfg.policy, cfg.host_nodes
            )
        },
    )?;
    let addr = b.host_addr().ok_or("no host address")?;
    let numa_policy = own_numa_maps_policy(addr)?;
    ensure(numa_policy == format!("bind:{from}"), || {
        format!("numa_maps policy after: {numa_policy}: {err}")
    })?;
    ensure(
        v.mempolicy_mode() == Some(KernelMode::Bind)
            && v.mempolicy_nodes() == Some(&nodes(&from.to_string())),
        || format!("kernel says {} after: {err}", v.mempolicy_text()),
    )?;
    Ok(format!(
        "node {to} filled ({} MiB); pages now {}; error: {err}; settings and get_mempolicy: bind {from}",
        fill / MIB,
        dist(&after)
    ))
}

pub fn threads_on_bound_cpus(t: &Topo) -> Check {
    let mut out = Vec::new();
    let with_cpus = t.mem_with_cpus();
    ensure(with_cpus.len() >= 2, || {
        format!("need two memory nodes with CPUs, have {with_cpus:?}")
    })?;
    for n in with_cpus {
        let cpus = t.host.node(n).map(|i| i.cpus.clone()).unwrap_or_default();
        // 2 threads of 64 MiB (prealloc's minimum a thread): node 1 is 512 MiB and the
        // guest's own files take a varying part of it, so 256 MiB sometimes did not fit.
        let b = Backend::builder(Kind::Ram, "th")
            .size(128 * MIB)
            .prealloc(true)
            .prealloc_threads(2)
            .policy(Policy::Bind)
            .host_nodes(nodes(&n.to_string()))
            .create()
            .map_err(|e| e.to_string())?;
        let s = b.prealloc_stats().ok_or("no prealloc stats")?;
        ensure(
            !s.cpus_seen.is_empty() && s.cpus_seen.iter().all(|c| cpus.contains(c)),
            || {
                format!(
                    "node {n}: threads ran on {:?}, node CPUs {cpus:?}",
                    s.cpus_seen
                )
            },
        )?;
        out.push(format!(
            "node {n}: {} threads on CPUs {:?}",
            s.threads, s.cpus_seen
        ));
    }
    Ok(out.join("; "))
}
