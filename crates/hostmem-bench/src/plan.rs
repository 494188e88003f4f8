//! What a run measures: the memory configurations, the size, the thread counts and the
//! two programs compared. Everything is checked before the first measurement, so a
//! missing QEMU or `hostmem` binary fails in a second, not minutes into a run.

use std::path::PathBuf;
use std::process::Command;

use hostmem::size::parse_size;

use crate::BenchArgs;

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

/// What the run measures and with what.
pub struct Plan {
    pub size: u64,
    /// CPUs this process may run on: the larger thread count, and the primer's.
    pub cpus: usize,
    pub threads: Vec<usize>,
    /// The `hostmem` binary whose `run` is timed against QEMU.
    pub hostmem: PathBuf,
    pub qemu: String,
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
    Ok(Plan {
        size,
        cpus,
        threads,
        hostmem,
        qemu: args.qemu.clone(),
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
}
