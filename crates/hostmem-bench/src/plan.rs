//! What a run measures: the memory configurations, the size, the thread counts and the
//! two programs compared. Everything is checked before the first measurement, so a
//! missing QEMU or `hostmem` binary fails in a second, not minutes into a run.

use std::path::PathBuf;
use std::process::Command;

use hostmem::size::parse_size;
use hostmem::HostTopology;

use crate::args::BenchArgs;

pub const HUGE_2M: u64 = 2 << 20;

/// The memory configurations measured one backend at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    RamThp,
    Ram4k,
    MemfdHuge2m,
    MemfdShmem,
}

impl Mem {
    pub const ALL: [Mem; 4] = [Mem::RamThp, Mem::Ram4k, Mem::MemfdHuge2m, Mem::MemfdShmem];

    pub fn label(self) -> &'static str {
        match self {
            Mem::RamThp => "ram THP",
            Mem::Ram4k => "ram 4 KiB",
            Mem::MemfdHuge2m => "memfd hugetlb 2 MiB",
            Mem::MemfdShmem => "memfd shmem",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mem::RamThp => "ram-thp",
            Mem::Ram4k => "ram-4k",
            Mem::MemfdHuge2m => "memfd-2m",
            Mem::MemfdShmem => "memfd-shmem",
        }
    }

    /// The same `-object` text is given to hostmem and to QEMU.
    pub fn spec(self, id: &str, size: u64, prealloc: bool, threads: usize) -> String {
        let kind = match self {
            Mem::RamThp | Mem::Ram4k => "memory-backend-ram",
            Mem::MemfdHuge2m | Mem::MemfdShmem => "memory-backend-memfd",
        };
        let huge = if self == Mem::MemfdHuge2m {
            ",hugetlb=on,hugetlbsize=2M"
        } else {
            ""
        };
        let on = if prealloc { "on" } else { "off" };
        format!("{kind},id={id},size={size}{huge},prealloc={on},prealloc-threads={threads}")
    }
}

/// The libvirt-style case: several `memory-backend-ram` objects written the way
/// libvirt writes a NUMA guest's memory (JSON `-object`, each backend bound to a host
/// node, `prealloc`, and one `thread-context` per backend with that node's
/// `node-affinity`, named by the backend's `prealloc-context`; no `prealloc-threads`,
/// as libvirt without `<allocation threads=...>`), and the same backends without the
/// contexts ("plain").
pub struct Libvirt {
    /// Bytes per backend (whole 2 MiB pages).
    pub each: u64,
    /// The host node each backend is bound to (and its context's `node-affinity`).
    pub nodes: Vec<u32>,
    /// Times the case runs per repetition.
    pub rounds: usize,
}

impl Libvirt {
    /// Backends that share `total` bytes, spread round robin over the nodes that have
    /// both memory and CPUs (node 0 where the host says nothing).
    pub fn new(total: u64, backends: usize, rounds: usize, host: &HostTopology) -> Libvirt {
        let mut usable: Vec<u32> = host
            .has_memory
            .iter()
            .filter(|&n| host.has_cpu.contains(n))
            .collect();
        if usable.is_empty() {
            usable = vec![0];
        }
        let backends = backends.max(1);
        Libvirt {
            each: total / backends as u64 / HUGE_2M * HUGE_2M,
            nodes: (0..backends).map(|i| usable[i % usable.len()]).collect(),
            rounds: rounds.max(1),
        }
    }

    pub fn total(&self) -> u64 {
        self.each * self.nodes.len() as u64
    }

    /// The objects, in libvirt's order and key order (each context right before its
    /// backend); `contexts: false` is the same line without them.
    pub fn line(&self, contexts: bool, prealloc: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let tc = if contexts {
                out.push(format!(
                    r#"{{"qom-type":"thread-context","id":"tc-ram-node{i}","node-affinity":[{node}]}}"#
                ));
                format!(r#","prealloc-context":"tc-ram-node{i}""#)
            } else {
                String::new()
            };
            out.push(format!(
                r#"{{"qom-type":"memory-backend-ram","id":"ram-node{i}","prealloc":{prealloc},"size":{},"host-nodes":[{node}],"policy":"bind"{tc}}}"#,
                self.each
            ));
        }
        out
    }
}

/// What the run measures and with what.
pub struct Plan {
    pub size: u64,
    /// CPUs this process may run on: the larger thread count, and the primer's.
    pub cpus: usize,
    pub threads: Vec<usize>,
    /// The `hostmem` binary whose `run` is timed against QEMU.
    pub hostmem: PathBuf,
    pub qemu: String,
    /// How the tables name QEMU: `QEMU 10.0` from its `--version`.
    pub qemu_label: String,
    pub libvirt: Libvirt,
}

/// The `hostmem` binary built next to this one (`target/release/hostmem` when the bench
/// is `target/release/hostmem-bench`): `cargo run -p hostmem-bench` builds only the
/// bench, so the product binary is looked for where `cargo build` puts it.
fn sibling_hostmem() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    Ok(exe.with_file_name("hostmem"))
}

/// Whether `program --version` runs at all.
fn runs(program: &std::ffi::OsStr) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// The first line of `qemu --version`, for the report.
pub fn qemu_version(qemu: &str) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `QEMU 10.0` from `QEMU emulator version 10.0.2 (Debian ...)`; `QEMU` when the line
/// says no version.
pub fn qemu_label(version_line: &str) -> String {
    version_line
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| {
            let mut p = v.split('.');
            Some(format!("QEMU {}.{}", p.next()?, p.next()?))
        })
        .unwrap_or_else(|| "QEMU".into())
}

pub fn make_plan(args: &BenchArgs, cpus: usize) -> Result<Plan, String> {
    let size = parse_size(&args.size)
        .filter(|&s| s >= 8 * HUGE_2M)
        .ok_or_else(|| format!("--size {}: expected a size of at least 16M", args.size))?;
    let size = size / (4 * HUGE_2M) * (4 * HUGE_2M);
    let mut threads = vec![1];
    if cpus > 1 {
        threads.push(cpus);
    }
    let hostmem = match &args.hostmem {
        Some(p) => p.clone(),
        None => sibling_hostmem()?,
    };
    if !runs(hostmem.as_os_str()) {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p hostmem-cli) or pass --hostmem",
            hostmem.display()
        ));
    }
    if !runs(args.qemu.as_ref()) {
        return Err(format!(
            "{} not found: install QEMU (Debian: apt-get install qemu-system-x86) or pass --qemu",
            args.qemu
        ));
    }
    if args.libvirt_backends == 0 {
        return Err("--libvirt-backends: expected at least 1".into());
    }
    Ok(Plan {
        size,
        cpus,
        threads,
        hostmem,
        qemu: args.qemu.clone(),
        qemu_label: qemu_label(&qemu_version(&args.qemu)),
        libvirt: Libvirt::new(
            size,
            args.libvirt_backends,
            args.libvirt_rounds,
            &HostTopology::read(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostmem::ObjectSpec;

    #[test]
    fn same_spec_for_both_tools() {
        let s = Mem::MemfdHuge2m.spec("m0", 1 << 30, true, 2);
        assert_eq!(s, "memory-backend-memfd,id=m0,size=1073741824,hugetlb=on,hugetlbsize=2M,prealloc=on,prealloc-threads=2");
        assert!(ObjectSpec::parse(&s).is_ok());
    }

    #[test]
    fn libvirt_line_has_one_context_per_backend() {
        let lv = Libvirt {
            each: 1 << 30,
            nodes: vec![0, 0],
            rounds: 1,
        };
        let line = lv.line(true, true);
        assert_eq!(line.len(), 4);
        assert_eq!(
            line[0],
            r#"{"qom-type":"thread-context","id":"tc-ram-node0","node-affinity":[0]}"#
        );
        assert_eq!(
            line[1],
            r#"{"qom-type":"memory-backend-ram","id":"ram-node0","prealloc":true,"size":1073741824,"host-nodes":[0],"policy":"bind","prealloc-context":"tc-ram-node0"}"#
        );
        for s in &line {
            ObjectSpec::parse(s).unwrap();
        }
        let plain = lv.line(false, false);
        assert_eq!(plain.len(), 2);
        assert!(plain.iter().all(|s| !s.contains("context")));
        assert!(plain[1].contains(r#""id":"ram-node1","prealloc":false"#));
    }

    #[test]
    fn qemu_label_from_version_line() {
        let v = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)";
        assert_eq!(qemu_label(v), "QEMU 10.0");
        assert_eq!(qemu_label("unknown"), "QEMU");
    }
}
