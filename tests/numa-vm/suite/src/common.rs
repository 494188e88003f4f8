//! Helpers every check of the suite shares: node sets, the guest's topology, backends
//! built for a check, and placement read back from the kernel.

use std::collections::BTreeMap;

use hostmem::{Backend, HostTopology, Kind, NodeSet, Policy};
use hostmem_testkit::pool::{Pool, PoolGuard};
use hostmem_testkit::spawn::Held;

pub const MIB: u64 = 1 << 20;
pub type Check = Result<String, String>;

pub fn nodes(s: &str) -> NodeSet {
    NodeSet::parse(s).expect("node list literal")
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

pub fn dist(per_node: &BTreeMap<u32, u64>) -> String {
    per_node
        .iter()
        .map(|(n, p)| format!("N{n}={p}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory nodes of the guest and its special ones, read from sysfs.
pub struct Topo {
    pub host: HostTopology,
    pub mem: Vec<u32>,
    pub cpu_only: Vec<u32>,
}

impl Topo {
    pub fn read() -> Topo {
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
    pub fn mem_with_cpus(&self) -> Vec<u32> {
        self.mem
            .iter()
            .copied()
            .filter(|&n| self.host.node(n).is_some_and(|i| !i.cpus.is_empty()))
            .collect()
    }
}

/// A RAM backend built with a policy and preallocated.
pub fn ram(id: &str, size: u64, policy: Policy, set: &str) -> Result<Backend, String> {
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
pub fn placement(b: &Backend) -> Result<BTreeMap<u32, u64>, String> {
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
pub fn own_numa_maps(addr: usize) -> Result<BTreeMap<u32, u64>, String> {
    let numa = std::fs::read_to_string("/proc/self/numa_maps").map_err(|e| e.to_string())?;
    numa_maps_pages(&numa, addr as u64)
}

/// The policy field of this process's mapping at `addr` in /proc/self/numa_maps (it
/// may hold a space: `prefer (many):1-2`).
pub fn own_numa_maps_policy(addr: usize) -> Result<String, String> {
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
pub fn write_sysfs(path: &str, value: &str, took: impl Fn(&str) -> bool) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {path}: {e}"))?;
    let now = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    ensure(took(now.trim()), || {
        format!("wrote {value:?} to {path}, it reads {:?}", now.trim())
    })
}

/// Sets THP for the guest while a closure runs (4 KiB pages make page counts exact).
/// Reading, setting or restoring the mode fails the test, as does the closure.
pub fn with_thp<T>(mode: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
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

/// Sets per-node 2 MiB pools (node, pages) while a closure runs, and puts them back.
/// A pool the kernel does not make exactly as asked, or cannot put back, fails the
/// test; so does the host-wide pool not having `host_wide` pages available (the check
/// must see the node, not the host, fall short).
pub fn with_node_pools(set: &[(u32, u64)], host_wide: u64, f: impl FnOnce() -> Check) -> Check {
    let mut guard = PoolGuard::new();
    let r = set
        .iter()
        .try_for_each(|&(n, pages)| guard.set_exactly(Pool::node(2 * MIB, n), pages))
        .and_then(|()| {
            let avail = Pool::host(2 * MIB).counts()?.available();
            ensure(avail >= host_wide, || {
                format!("host-wide pool has {avail} pages available, the test needs {host_wide}")
            })?;
            f()
        });
    let restored = guard.restore();
    let r = r?;
    restored?;
    Ok(r)
}

/// Pages per node of the VMA at `addr` in a numa_maps text.
pub fn numa_maps_pages(numa: &str, addr: u64) -> Result<BTreeMap<u32, u64>, String> {
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

/// The backend object of `id` in the run's one-line JSON (no JSON crate in the guest
/// suite: the report's shape is fixed and flat enough to slice).
pub fn backend_slice<'a>(json: &'a str, id: &str) -> Result<&'a str, String> {
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

pub fn extract_addr(json: &str, id: &str) -> Result<u64, String> {
    let s = backend_slice(json, id)?;
    let v = s.split("\"host-addr\":").nth(1).ok_or("no host-addr")?;
    v.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .map_err(|e| format!("host-addr: {e}"))
}

pub fn extract_pages(json: &str, id: &str) -> Result<BTreeMap<u32, u64>, String> {
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

/// Runs `hostmem run --json --hold ARGS` and, while it holds its backends, reads its
/// report line and the kernel's numa_maps of that process; then lets it exit and
/// requires success.
pub fn held_run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<(String, String), String> {
    let held = Held::start("/bin/hostmem", args)?;
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", held.pid()))
        .map_err(|e| e.to_string())?;
    let line = held.line.clone();
    let (status, _) = held.finish()?;
    ensure(status.success(), || format!("hostmem run exited {status}"))?;
    Ok((line, numa))
}
