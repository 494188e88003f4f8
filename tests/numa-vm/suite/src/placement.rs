//! Where pages land for each policy, read back page by page from the kernel.

use hostmem::numa::KernelMode;
use hostmem::Policy;
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use crate::common::*;

pub fn bind_one(t: &Topo) -> Check {
    let n = t.mem[1];
    let b = ram("b1", 64 * MIB, Policy::Bind, &n.to_string())?;
    let p = placement(&b)?;
    ensure(p.keys().all(|&k| k == n), || {
        format!("pages off node {n}: {}", dist(&p))
    })?;
    let v = b.inspect().map_err(|e| e.to_string())?;
    ensure(
        v.mempolicy_mode() == Some(KernelMode::Bind)
            && v.mempolicy_nodes() == Some(&nodes(&n.to_string())),
        || format!("get_mempolicy says {}", v.mempolicy_text()),
    )?;
    Ok(format!("bind:{n} {}", dist(&p)))
}

pub fn bind_two(t: &Topo) -> Check {
    let set = format!("{},{}", t.mem[1], t.mem[2]);
    let b = ram("b2", 64 * MIB, Policy::Bind, &set)?;
    let p = placement(&b)?;
    let allowed = nodes(&set);
    ensure(p.keys().all(|&k| allowed.contains(k)), || {
        format!("pages outside {set}: {}", dist(&p))
    })?;
    Ok(format!("bind:{set} {}", dist(&p)))
}

pub fn interleave_four(t: &Topo) -> Check {
    let set: Vec<String> = t.mem.iter().take(4).map(|n| n.to_string()).collect();
    let set = set.join(",");
    // Read under THP=never too: khugepaged collapses would move pages between nodes.
    let p = with_thp("never", || {
        placement(&ram("il", 64 * MIB, Policy::Interleave, &set)?)
    })?;
    let total: u64 = p.values().sum();
    let (lo, hi) = (
        p.values().min().copied().unwrap_or(0),
        p.values().max().copied().unwrap_or(0),
    );
    ensure(p.len() == 4 && hi - lo <= 1, || {
        format!("uneven over {set}: {} (total {total})", dist(&p))
    })?;
    Ok(format!("interleave:{set} {}", dist(&p)))
}

pub fn preferred(t: &Topo) -> Check {
    let n = t.mem[2];
    let b = ram("pf", 64 * MIB, Policy::Preferred, &n.to_string())?;
    let p = placement(&b)?;
    ensure(p.keys().all(|&k| k == n), || {
        format!("preferred node {n} had room, yet {}", dist(&p))
    })?;
    let set = format!("{},{}", t.mem[1], t.mem[2]);
    let many = ram("pm", 32 * MIB, Policy::Preferred, &set)?;
    let v = many.inspect().map_err(|e| e.to_string())?;
    ensure(
        v.mempolicy_mode() == Some(KernelMode::PreferredMany),
        || format!("several preferred nodes gave {}", v.mempolicy_text()),
    )?;
    let pm = placement(&many)?;
    let allowed = nodes(&set);
    ensure(pm.keys().all(|&k| allowed.contains(k)), || {
        format!("preferred-many pages outside {set}: {}", dist(&pm))
    })?;
    Ok(format!(
        "preferred:{n} {}; preferred:{set} -> {} {}",
        dist(&p),
        v.mempolicy_text(),
        dist(&pm)
    ))
}

pub fn weighted_interleave(t: &Topo) -> Check {
    let (a, b) = (t.mem[0], t.mem[1]);
    let dir = "/sys/kernel/mm/mempolicy/weighted_interleave";
    let wa = format!("{dir}/node{a}");
    let wb = format!("{dir}/node{b}");
    let old_a = std::fs::read_to_string(&wa).map_err(|e| format!("{wa}: {e}"))?;
    let old_b = std::fs::read_to_string(&wb).map_err(|e| format!("{wb}: {e}"))?;
    write_sysfs(&wa, "3", |now| now == "3")?;
    write_sysfs(&wb, "1", |now| now == "1")?;
    // Placement is read while THP is still off: khugepaged would otherwise collapse
    // 4 KiB pages into huge pages on one node and blur the ratio.
    let r = with_thp("never", || {
        let bk = ram(
            "wi",
            64 * MIB,
            Policy::WeightedInterleave,
            &format!("{a},{b}"),
        )?;
        let p = placement(&bk)?;
        Ok::<_, String>((bk, p))
    });
    let restored = write_sysfs(&wa, old_a.trim(), |now| now == old_a.trim()).and(write_sysfs(
        &wb,
        old_b.trim(),
        |now| now == old_b.trim(),
    ));
    let (bk, p) = r?;
    restored?;
    let (pa, pb) = (
        p.get(&a).copied().unwrap_or(0),
        p.get(&b).copied().unwrap_or(0),
    );
    let ratio = pa as f64 / pb.max(1) as f64;
    ensure((ratio / 3.0 - 1.0).abs() <= 0.05, || {
        format!("ratio {ratio:.3}, want 3 within 5 %: {}", dist(&p))
    })?;
    let v = bk.inspect().map_err(|e| e.to_string())?;
    ensure(
        v.mempolicy_mode() == Some(KernelMode::WeightedInterleave),
        || format!("get_mempolicy says {}", v.mempolicy_text()),
    )?;
    Ok(format!(
        "weighted-interleave 3:1 over {a},{b}: {} ratio {ratio:.3}",
        dist(&p)
    ))
}

pub fn local(t: &Topo) -> Check {
    let n = *t
        .mem_with_cpus()
        .get(1)
        .ok_or("need two memory nodes with CPUs")?;
    let cpus = t.host.node(n).map(|i| i.cpus.clone()).unwrap_or_default();
    let all = sched_getaffinity(None).map_err(|e| e.to_string())?;
    let mut only = CpuSet::new();
    for &c in &cpus {
        only.set(c);
    }
    sched_setaffinity(None, &only).map_err(|e| e.to_string())?;
    let r = ram("lo", 32 * MIB, Policy::Local, "");
    let restored = sched_setaffinity(None, &all).map_err(|e| format!("restoring affinity: {e}"));
    let b = r?;
    restored?;
    let p = placement(&b)?;
    ensure(p.keys().all(|&k| k == n), || {
        format!("local on node {n}'s CPUs {cpus:?}, yet {}", dist(&p))
    })?;
    let v = b.inspect().map_err(|e| e.to_string())?;
    ensure(v.mempolicy_mode() == Some(KernelMode::Local), || {
        format!("get_mempolicy says {}", v.mempolicy_text())
    })?;
    Ok(format!("local from CPUs {cpus:?}: {}", dist(&p)))
}

pub fn refuses_bad_nodes(t: &Topo) -> Check {
    let memless = *t
        .cpu_only
        .first()
        .ok_or("the guest has no memoryless node")?;
    let e = ram("x", 4 * MIB, Policy::Bind, &memless.to_string())
        .err()
        .ok_or("bind to a memoryless node succeeded")?;
    ensure(e.contains(&format!("node {memless} has no memory")), || {
        format!("message: {e}")
    })?;
    let e2 = ram("y", 4 * MIB, Policy::Interleave, &format!("0,{memless}"))
        .err()
        .ok_or("interleave over a memoryless node succeeded")?;
    ensure(
        e2.contains(&format!("node {memless} has no memory")),
        || format!("message: {e2}"),
    )?;
    let missing = (0..64)
        .find(|n| !t.host.possible.contains(*n))
        .unwrap_or(63);
    let e3 = ram("z", 4 * MIB, Policy::Bind, &missing.to_string())
        .err()
        .ok_or("bind to a missing node succeeded")?;
    ensure(
        e3.contains(&format!("node {missing} does not exist")),
        || format!("message: {e3}"),
    )?;
    Ok(format!("'{e}' / '{e3}'"))
}
