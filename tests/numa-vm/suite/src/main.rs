//! The NUMA placement suite, run inside the multi-node test guest (tests/numa-vm/run.sh).
//!
//! Every check reads placement back from the kernel (move_pages page by page,
//! get_mempolicy, numa_maps of a separate `hostmem run` process). One line per test,
//! page distributions included, then `numa-suite: N passed, M failed`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use hostmem::numa::HugePool;
use hostmem::numa::KernelMode;
use hostmem::{Backend, HostTopology, Kind, NodeSet, Policy};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

const MIB: u64 = 1 << 20;
type Check = Result<String, String>;
/// A named check of the suite.
type Test = (&'static str, fn(&Topo) -> Check);

fn nodes(s: &str) -> NodeSet {
    NodeSet::parse(s).expect("node list literal")
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn dist(per_node: &BTreeMap<u32, u64>) -> String {
    per_node
        .iter()
        .map(|(n, p)| format!("N{n}={p}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory nodes of the guest and its special ones, read from sysfs.
struct Topo {
    host: HostTopology,
    mem: Vec<u32>,
    cpu_only: Vec<u32>,
}

impl Topo {
    fn read() -> Topo {
        let host = HostTopology::read();
        let mem: Vec<u32> = host.has_memory.iter().collect();
        let cpu_only = host
            .online
            .iter()
            .filter(|n| !host.has_memory.contains(*n))
            .collect();
        Topo {
            host,
            mem,
            cpu_only,
        }
    }

    /// Memory nodes that also have CPUs.
    fn mem_with_cpus(&self) -> Vec<u32> {
        self.mem
            .iter()
            .copied()
            .filter(|&n| self.host.node(n).is_some_and(|i| !i.cpus.is_empty()))
            .collect()
    }
}

/// A RAM backend built with a policy and preallocated.
fn ram(id: &str, size: u64, policy: Policy, set: &str) -> Result<Backend, String> {
    let mut b = Backend::builder(Kind::Ram, id)
        .size(size)
        .prealloc(true)
        .policy(policy);
    if !set.is_empty() {
        b = b.host_nodes(nodes(set));
    }
    b.create().map_err(|e| e.to_string())
}

/// Where a preallocated backend's pages are, page by page (move_pages): every page of
/// its size present, none unreadable, so that "all on node N" is never said of nothing.
/// The page size is the kernel's (smaps KernelPageSize).
fn placement(b: &Backend) -> Result<BTreeMap<u32, u64>, String> {
    let page = b.inspect().map_err(|e| e.to_string())?.page_size;
    let want = b.size() / page.max(1);
    let p = b.page_nodes().map_err(|e| e.to_string())?;
    ensure(p.absent == 0 && p.other.is_empty(), || {
        format!(
            "{} pages not present, {:?} (errno: pages) unreadable",
            p.absent, p.other
        )
    })?;
    ensure(p.present() == want && want > 0, || {
        format!(
            "move_pages found {} pages, the backend has {want}: {}",
            p.present(),
            dist(&p.per_node)
        )
    })?;
    Ok(p.per_node)
}

/// Pages per node of this process's mapping at `addr`, from /proc/self/numa_maps.
fn own_numa_maps(addr: usize) -> Result<BTreeMap<u32, u64>, String> {
    let numa = std::fs::read_to_string("/proc/self/numa_maps").map_err(|e| e.to_string())?;
    numa_maps_pages(&numa, addr as u64)
}

/// The policy field of this process's mapping at `addr` in /proc/self/numa_maps (it
/// may hold a space: `prefer (many):1-2`).
fn own_numa_maps_policy(addr: usize) -> Result<String, String> {
    let numa = std::fs::read_to_string("/proc/self/numa_maps").map_err(|e| e.to_string())?;
    let line = numa
        .lines()
        .find(|l| l.starts_with(&format!("{addr:x} ")))
        .ok_or_else(|| format!("no numa_maps line at {addr:x}"))?;
    let rest = line.split_once(' ').map_or("", |(_, r)| r);
    // The policy ends where the first `key=value` word begins.
    let end = rest
        .split(' ')
        .take_while(|w| !w.contains('='))
        .map(|w| w.len() + 1)
        .sum::<usize>();
    Ok(rest[..end.min(rest.len())].trim().to_string())
}

/// Writes a sysfs file, then reads it back: a setup step that did not take fails.
fn write_sysfs(path: &str, value: &str, took: impl Fn(&str) -> bool) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {path}: {e}"))?;
    let now = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    ensure(took(now.trim()), || {
        format!("wrote {value:?} to {path}, it reads {:?}", now.trim())
    })
}

/// Sets THP for the guest while a closure runs (4 KiB pages make page counts exact).
/// Reading, setting or restoring the mode fails the test, as does the closure.
fn with_thp<T>(mode: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let path = "/sys/kernel/mm/transparent_hugepage/enabled";
    let chosen = |s: &str| {
        s.split('[')
            .nth(1)
            .and_then(|s| s.split(']').next())
            .map(str::to_string)
    };
    let before = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let old = chosen(&before).ok_or_else(|| format!("{path} has no [mode]: {before:?}"))?;
    write_sysfs(path, mode, |now| chosen(now).as_deref() == Some(mode))?;
    let r = f();
    write_sysfs(path, &old, |now| {
        chosen(now).as_deref() == Some(old.as_str())
    })?;
    r
}

fn bind_one(t: &Topo) -> Check {
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

fn bind_two(t: &Topo) -> Check {
    let set = format!("{},{}", t.mem[1], t.mem[2]);
    let b = ram("b2", 64 * MIB, Policy::Bind, &set)?;
    let p = placement(&b)?;
    let allowed = nodes(&set);
    ensure(p.keys().all(|&k| allowed.contains(k)), || {
        format!("pages outside {set}: {}", dist(&p))
    })?;
    Ok(format!("bind:{set} {}", dist(&p)))
}

fn interleave_four(t: &Topo) -> Check {
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

fn preferred(t: &Topo) -> Check {
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

fn weighted_interleave(t: &Topo) -> Check {
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

fn local(t: &Topo) -> Check {
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

fn refuses_bad_nodes(t: &Topo) -> Check {
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

fn live_rebind(t: &Topo) -> Check {
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
fn failed_rebind_keeps_settings_and_kernel_agreeing(t: &Topo) -> Check {
    with_thp("never", || failed_rebind(t))
}

fn failed_rebind(t: &Topo) -> Check {
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

fn threads_on_bound_cpus(t: &Topo) -> Check {
    let mut out = Vec::new();
    let with_cpus = t.mem_with_cpus();
    ensure(with_cpus.len() >= 2, || {
        format!("need two memory nodes with CPUs, have {with_cpus:?}")
    })?;
    for n in with_cpus {
        let cpus = t.host.node(n).map(|i| i.cpus.clone()).unwrap_or_default();
        let b = Backend::builder(Kind::Ram, "th")
            .size(256 * MIB)
            .prealloc(true)
            .prealloc_threads(4)
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

/// Sets per-node 2 MiB pools (node, pages) while a closure runs, and puts them back.
/// A pool the kernel does not make exactly as asked, or cannot put back, fails the
/// test; so does the host-wide pool not having `host_wide` pages available (the check
/// must see the node, not the host, fall short).
fn with_node_pools(set: &[(u32, u64)], host_wide: u64, f: impl FnOnce() -> Check) -> Check {
    let pool = |n: Option<u32>| {
        HugePool::read(2 * MIB, n).ok_or_else(|| format!("no 2 MiB pool for node {n:?}"))
    };
    let mut saved = Vec::new();
    for &(n, _) in set {
        saved.push((n, pool(Some(n))?.total));
    }
    let apply = |v: &[(u32, u64)]| -> Result<(), String> {
        for &(n, pages) in v {
            let got = HugePool::set_total(2 * MIB, Some(n), pages)
                .map_err(|e| format!("node {n} pool: {e}"))?;
            ensure(got == pages, || {
                format!("node {n}: asked for {pages} huge pages, the kernel made {got}")
            })?;
        }
        Ok(())
    };
    let r = apply(set).and_then(|()| {
        let avail = pool(None)?.available();
        ensure(avail >= host_wide, || {
            format!("host-wide pool has {avail} pages available, the test needs {host_wide}")
        })?;
        f()
    });
    let restored = apply(&saved);
    let r = r?;
    restored?;
    Ok(r)
}

/// Enough huge pages host-wide (8 on one node), none on the bound node: the error
/// names the node, which only the per-node check can do.
fn empty_pool_named(t: &Topo) -> Check {
    let (full, empty) = (t.mem[0], t.mem[1]);
    with_node_pools(&[(full, 8), (empty, 0)], 4, || {
        empty_pool_named_now(full, empty)
    })
}

fn empty_pool_named_now(full: u32, empty: u32) -> Check {
    let mk = |n: u32| {
        Backend::builder(Kind::Memfd, "hp")
            .size(8 * MIB)
            .hugetlb(true)
            .prealloc(true)
            .policy(Policy::Bind)
            .host_nodes(nodes(&n.to_string()))
            .create()
    };
    let ok = mk(full).map_err(|e| format!("node {full} has 8 pages, yet: {e}"))?;
    let p = placement(&ok)?;
    ensure(p.keys().all(|&k| k == full), || {
        format!("huge pages off node {full}: {}", dist(&p))
    })?;
    drop(ok);
    let e = mk(empty)
        .err()
        .ok_or("bind to a node with an empty pool succeeded")?
        .to_string();
    ensure(
        e.contains(&format!("on the bound nodes (node {empty}: 0 free)")),
        || format!("message: {e}"),
    )?;
    Ok(e)
}

fn run_two_backends(t: &Topo) -> Check {
    let (a, b) = (t.mem[1], t.mem[2]);
    let mut child = Command::new("/bin/hostmem")
        .args(["run", "--json", "--hold"])
        .args([
            "-object",
            &format!("memory-backend-ram,id=a,size=48M,prealloc=on,policy=bind,host-nodes={a}"),
        ])
        .args([
            "-object",
            &format!("memory-backend-ram,id=b,size=32M,prealloc=on,policy=bind,host-nodes={b}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", child.id()))
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    ensure(status.success(), || format!("hostmem run exited {status}"))?;
    let mut out = Vec::new();
    for (id, node) in [("a", a), ("b", b)] {
        let reported = extract_pages(&line, id)?;
        let addr = extract_addr(&line, id)?;
        let kernel: BTreeMap<u32, u64> = numa
            .lines()
            .find(|l| l.starts_with(&format!("{addr:x} ")))
            .ok_or_else(|| format!("no numa_maps line at {addr:x}"))?
            .split_whitespace()
            .filter_map(|w| {
                let (n, p) = w.strip_prefix('N')?.split_once('=')?;
                Some((n.parse().ok()?, p.parse().ok()?))
            })
            .collect();
        ensure(reported == kernel, || {
            format!(
                "{id}: report {} vs numa_maps {}",
                dist(&reported),
                dist(&kernel)
            )
        })?;
        let want = if id == "a" { 48 * MIB } else { 32 * MIB } / 4096;
        ensure(
            kernel.keys().all(|&k| k == node) && kernel.values().sum::<u64>() == want,
            || {
                format!(
                    "{id}: want {want} pages on node {node}, numa_maps {}",
                    dist(&kernel)
                )
            },
        )?;
        out.push(format!("{id}@{node}: {}", dist(&kernel)));
    }
    Ok(out.join("; "))
}

/// A 4-node VM's QEMU command line (libvirt-style JSON backends, one bound to each
/// memory node, `-numa node,memdev=`): `--check` says every backend fits, and the real
/// run puts each backend's pages on its node, as numa_maps of that process shows.
fn qemu_cmdline_checked_then_run(t: &Topo) -> Check {
    let nodes = t.mem.get(..4).ok_or("need 4 memory nodes")?;
    let mut args: Vec<String> = ["qemu-system-x86_64", "-m", "128M", "-nodefaults", "-S"]
        .map(String::from)
        .to_vec();
    for (i, n) in nodes.iter().enumerate() {
        args.push("-object".into());
        args.push(format!(
            r#"{{"qom-type":"memory-backend-ram","id":"ram-node{i}","size":33554432,"prealloc":true,"policy":"bind","host-nodes":[{n}]}}"#
        ));
        args.push("-numa".into());
        args.push(format!("node,nodeid={i},memdev=ram-node{i}"));
    }
    let check = Command::new("/bin/hostmem")
        .args(["run", "--check", "--"])
        .args(&args)
        .output()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let text = String::from_utf8_lossy(&check.stdout);
    ensure(
        check.status.success() && text.matches(" fits").count() == 4,
        || format!("--check: {}\n{text}", check.status),
    )?;
    let mut child = Command::new("/bin/hostmem")
        .args(["run", "--json", "--hold", "--"])
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting /bin/hostmem: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", child.id()))
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    ensure(status.success(), || format!("hostmem run exited {status}"))?;
    let mut out = Vec::new();
    for (i, &node) in nodes.iter().enumerate() {
        let id = format!("ram-node{i}");
        let addr = extract_addr(&line, &id)?;
        let kernel = numa_maps_pages(&numa, addr)?;
        ensure(
            kernel.keys().all(|&k| k == node) && kernel.values().sum::<u64>() == 8192,
            || format!("{id}: predicted node {node}, numa_maps {}", dist(&kernel)),
        )?;
        out.push(format!("{id}@{node}: {}", dist(&kernel)));
    }
    Ok(format!("--check: 4 fit; run: {}", out.join("; ")))
}

/// Pages per node of the VMA at `addr` in a numa_maps text.
fn numa_maps_pages(numa: &str, addr: u64) -> Result<BTreeMap<u32, u64>, String> {
    Ok(numa
        .lines()
        .find(|l| l.starts_with(&format!("{addr:x} ")))
        .ok_or_else(|| format!("no numa_maps line at {addr:x}"))?
        .split_whitespace()
        .filter_map(|w| {
            let (n, p) = w.strip_prefix('N')?.split_once('=')?;
            Some((n.parse().ok()?, p.parse().ok()?))
        })
        .collect())
}

/// Huge page pools that are uneven across nodes: enough pages in total, none on the
/// node the backend is bound to. `--check` names the node; the real run of the same
/// line then fails with the same words.
fn check_names_an_empty_node_pool_like_the_run(t: &Topo) -> Check {
    let (full, empty) = (t.mem[0], t.mem[1]);
    with_node_pools(&[(full, 8), (empty, 0)], 8, || check_names_now(empty))
}

fn check_names_now(empty: u32) -> Check {
    let args = [
        "qemu-system-x86_64".to_string(),
        "-m".into(),
        "16M".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=hp,size=16M,hugetlb=on,prealloc=on,policy=bind,host-nodes={empty}"),
        "-numa".into(),
        "node,memdev=hp".into(),
    ];
    let go = |check: bool| {
        Command::new("/bin/hostmem")
            .arg("run")
            .args(check.then_some("--check"))
            .arg("--")
            .args(&args)
            .output()
            .map_err(|e| format!("starting /bin/hostmem: {e}"))
    };
    let (check, real) = (go(true)?, go(false)?);
    let reason = format!("node {empty}: 0 free");
    let (ce, re) = (
        String::from_utf8_lossy(&check.stderr).to_string(),
        String::from_utf8_lossy(&real.stderr).to_string(),
    );
    ensure(!check.status.success() && ce.contains(&reason), || {
        format!("--check did not name node {empty}: {ce}")
    })?;
    ensure(!real.status.success() && re.contains(&reason), || {
        format!("the run did not fail the same way: {re}")
    })?;
    Ok(format!(
        "--check and run both: {}",
        re.trim()
            .lines()
            .last()
            .unwrap_or("")
            .rsplit("hp': ")
            .next()
            .unwrap_or("")
    ))
}

/// The backend object of `id` in the run's one-line JSON (no JSON crate in the guest
/// suite: the report's shape is fixed and flat enough to slice).
fn backend_slice<'a>(json: &'a str, id: &str) -> Result<&'a str, String> {
    let key = format!("\"id\":\"{id}\"");
    let at = json
        .find(&key)
        .ok_or_else(|| format!("no backend {id} in report"))?;
    let start = json[..at].rfind("{\"").unwrap_or(0);
    let end = json[at..]
        .find("\"qom-type\"")
        .map(|e| at + e)
        .unwrap_or(json.len());
    let next = json[end..]
        .find("},{\"")
        .map(|e| end + e)
        .unwrap_or(json.len());
    Ok(&json[start..next])
}

fn extract_addr(json: &str, id: &str) -> Result<u64, String> {
    let s = backend_slice(json, id)?;
    let v = s.split("\"host-addr\":").nth(1).ok_or("no host-addr")?;
    v.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .map_err(|e| format!("host-addr: {e}"))
}

fn extract_pages(json: &str, id: &str) -> Result<BTreeMap<u32, u64>, String> {
    let s = backend_slice(json, id)?;
    let v = s
        .split("\"pages-per-node\":{")
        .nth(1)
        .ok_or("no pages-per-node")?;
    let body = v.split('}').next().unwrap_or("");
    body.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once(':').ok_or("bad pages-per-node")?;
            Ok((
                k.trim_matches('"').parse().map_err(|_| "node id")?,
                v.parse().map_err(|_| "page count")?,
            ))
        })
        .collect::<Result<_, &str>>()
        .map_err(str::to_string)
}

fn main() {
    let t = Topo::read();
    println!(
        "numa-suite: kernel {}, nodes online {}, with memory {}, memoryless {:?}",
        t.host.kernel_release, t.host.online, t.host.has_memory, t.cpu_only
    );
    if t.mem.len() < 4 {
        println!("FAIL topology: need 4 memory nodes, have {:?}", t.mem);
        println!("numa-suite: 0 passed, 1 failed");
        std::process::exit(1);
    }
    let tests: [Test; 14] = [
        ("bind-one-node", bind_one),
        ("bind-two-nodes", bind_two),
        ("interleave-four-nodes", interleave_four),
        ("preferred-and-preferred-many", preferred),
        ("weighted-interleave-3-1", weighted_interleave),
        ("local", local),
        ("refuse-memoryless-and-missing-nodes", refuses_bad_nodes),
        ("live-rebind-0-to-2", live_rebind),
        (
            "failed-rebind-restores-policy",
            failed_rebind_keeps_settings_and_kernel_agreeing,
        ),
        ("prealloc-threads-on-bound-cpus", threads_on_bound_cpus),
        ("empty-node-pool-named", empty_pool_named),
        ("run-two-backends-vs-numa-maps", run_two_backends),
        (
            "qemu-cmdline-checked-then-run",
            qemu_cmdline_checked_then_run,
        ),
        (
            "check-names-empty-node-pool",
            check_names_an_empty_node_pool_like_the_run,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        let start = std::time::Instant::now();
        match std::panic::catch_unwind(|| f(&t)) {
            Ok(Ok(detail)) => {
                passed += 1;
                println!(
                    "ok   {name} ({:.2} s): {detail}",
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(Err(why)) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: panicked");
            }
        }
    }
    println!("numa-suite: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
