//! `hostmem-bench plug`: issue 22's figures. Per kind of memory, in repetitions whose
//! order alternates: hostmem plugs `--size` bytes in `--block` blocks of a backend made
//! with reserve=off and unplugs them again; against it, the same kind preallocated as a
//! plain backend and the kernel's own discard of as much memory (MADV_DONTNEED of
//! private memory, a hole punched in a memfd). After each unplug and each discard the
//! memory is checked back in the kernel's figures (smaps, the file's allocated blocks,
//! the huge page pool). Then Committed_AS across plugging part of a large maximum.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Instant;

use hostmem::plug::Blocks;
use hostmem::size::{format_size, parse_size};
use hostmem::{Backend, InUse, Progress};
use hostmem_testkit::pool::Pool;

use crate::guards::{HugePagesGuard, NoThp};
use crate::inproc::make_backend;
use crate::kernel;
use crate::modereport::{host_header, order, ModeRun};
use crate::modes::PlugArgs;
use crate::pattern::{meminfo, smaps_field};
use crate::plan::{Mem, HUGE_2M};
use crate::runner::prime;

/// The kinds measured, with their `--kinds` names.
const KINDS: [(&str, Mem); 4] = [
    ("4k", Mem::Ram4k),
    ("thp", Mem::RamThp),
    ("shmem", Mem::MemfdShmem),
    ("2m", Mem::MemfdHuge2m),
];

struct Plug {
    size: u64,
    block: u64,
    cpus: usize,
    progress: Arc<Progress>,
    run: ModeRun,
}

/// Resident bytes of this process's mapping at `addr` as smaps shows them, huge pages
/// of hugetlbfs included (smaps counts those apart from Rss).
fn resident(addr: usize) -> f64 {
    ["Rss", "Shared_Hugetlb", "Private_Hugetlb"]
        .iter()
        .filter_map(|f| smaps_field("self", addr, f))
        .sum::<u64>() as f64
}

/// Bytes allocated to the file behind the memory (st_blocks), if it has one.
fn file_bytes(mem: &InUse) -> Option<f64> {
    let (fd, _) = mem.fd()?;
    let f = File::from(fd.try_clone_to_owned().ok()?);
    Some((f.metadata().ok()?.blocks() * 512) as f64)
}

fn pool_free(mem: Mem) -> Option<f64> {
    (mem == Mem::MemfdHuge2m)
        .then(|| Pool::host(HUGE_2M).counts().ok().map(|c| c.free as f64))
        .flatten()
}

impl Plug {
    fn spec(&self, mem: Mem, id: &str, size: u64, prealloc: bool) -> String {
        mem.spec(id, size, prealloc, self.cpus)
    }

    fn push(&mut self, key: String, v: Option<f64>) {
        self.run.samples.push(key, v);
    }

    /// hostmem: plug the whole size, check, unplug it, check.
    fn hostmem(&mut self, key: &str, mem: Mem, keep: bool) -> Result<(), String> {
        let spec = format!("{},reserve=off", self.spec(mem, "plug", self.size, false));
        let b = make_backend(&spec, &self.progress)?;
        let mut blocks = Blocks::new(&b, self.block).map_err(|e| e.to_string())?;
        let addr = blocks.memory().host_addr();
        let free0 = pool_free(mem);
        let t = Instant::now();
        blocks
            .plug(0..self.size)
            .map_err(|e| format!("plug: {e}"))?;
        let plug = t.elapsed().as_secs_f64();
        let (res1, free1) = (resident(addr), pool_free(mem));
        let thp = smaps_field("self", addr, "AnonHugePages");
        let (t, cpu) = (Instant::now(), kernel::thread_cpu());
        blocks
            .unplug(0..self.size, false)
            .map_err(|e| format!("unplug: {e}"))?;
        let unplug = t.elapsed().as_secs_f64();
        let unplug_cpu = kernel::thread_cpu() - cpu;
        if !keep {
            return Ok(());
        }
        let k = |m: &str| format!("plug/{key}/{m}");
        self.push(k("plug"), Some(plug));
        self.push(k("unplug"), Some(unplug));
        self.push(k("unplug-cpu"), Some(unplug_cpu));
        self.push(k("plugged-thp"), thp.map(|b| b as f64));
        self.push(k("plugged-resident"), Some(res1));
        self.push(k("unplugged-resident"), Some(resident(addr)));
        self.push(k("unplugged-file"), file_bytes(blocks.memory()));
        if let (Some(f0), Some(f1), Some(f2)) = (free0, free1, pool_free(mem)) {
            self.push(k("pool-taken"), Some(f0 - f1));
            self.push(k("pool-back"), Some(f2 - f1));
        }
        Ok(())
    }

    /// The kernel: a plain backend preallocated, then the kernel's own discard of as
    /// much memory of that kind.
    fn kernel(&mut self, key: &str, mem: Mem, keep: bool) -> Result<(), String> {
        // Made without prealloc, then preallocated on its own: the timed work is the
        // preallocation, as a plug's is its populate (creating a backend also parses,
        // maps and checks the host, which a plug does not do).
        let spec = self.spec(mem, "plain", self.size, false);
        let mut b: Backend = make_backend(&spec, &self.progress)?;
        let t = Instant::now();
        b.prealloc_now(self.cpus as u32, &self.progress)
            .map_err(|e| format!("prealloc: {e}"))?;
        let prealloc = t.elapsed().as_secs_f64();
        let k = |m: &str| format!("plug/{key}/{m}");
        let thp = b
            .host_addr()
            .and_then(|a| smaps_field("self", a, "AnonHugePages"));
        // What the discard gave back, as the kernel counts it: the file's allocated
        // bytes gone (memfd), the helper's resident bytes gone (private memory).
        let (discard, cpu, freed) = match mem {
            Mem::MemfdHuge2m | Mem::MemfdShmem => {
                let hold = b.hold().map_err(|e| e.to_string())?;
                let before = file_bytes(&hold);
                let (secs, cpu) = kernel::punch_hole(&hold)?;
                let freed = before.zip(file_bytes(&hold)).map(|(a, b)| a - b);
                (secs, cpu, freed)
            }
            Mem::Ram4k | Mem::RamThp => {
                drop(b);
                let d = kernel::dontneed(self.size, mem == Mem::RamThp)?;
                let freed = d.rss_before as f64 - d.rss_after as f64;
                (d.secs, d.cpu, Some(freed))
            }
        };
        if keep {
            self.push(k("prealloc"), Some(prealloc));
            self.push(k("kernel-discard"), Some(discard));
            self.push(k("kernel-discard-cpu"), Some(cpu));
            self.push(k("prealloc-thp"), thp.map(|b| b as f64));
            self.push(k("kernel-freed"), freed);
        }
        Ok(())
    }

    /// Committed_AS before making a `max` backend without a reservation and after
    /// plugging `plugged` bytes of it.
    fn committed(&mut self, key: &str, mem: Mem, max: u64, plugged: u64) -> Result<(), String> {
        let before = meminfo("Committed_AS");
        let spec = format!("{},reserve=off", self.spec(mem, "big", max, false));
        let b = make_backend(&spec, &self.progress)?;
        let mut blocks = Blocks::new(&b, self.block).map_err(|e| e.to_string())?;
        blocks.plug(0..plugged).map_err(|e| format!("plug: {e}"))?;
        let after = meminfo("Committed_AS");
        let d = before.zip(after).map(|(a, b)| b as f64 - a as f64);
        self.push(format!("plug/{key}/committed-growth"), d);
        Ok(())
    }
}

pub(crate) fn run(args: &PlugArgs) -> Result<ModeRun, String> {
    let parse = |s: &str| parse_size(s).ok_or(format!("bad size {s:?}"));
    let block = parse(&args.block)?;
    let size = parse(&args.size)? / HUGE_2M * HUGE_2M;
    let (max, plugged) = (parse(&args.max)?, parse(&args.committed_plug)?);
    if block == 0 || size == 0 || !size.is_multiple_of(block) || !plugged.is_multiple_of(block) {
        return Err("--size and --committed-plug must be whole blocks".into());
    }
    let progress = Arc::new(Progress::new());
    let _events =
        hostmem_cli::signals::install(progress.clone()).map_err(|e| format!("signals: {e}"))?;
    let mut p = Plug {
        size,
        block,
        cpus: crate::allowed_cpus(),
        progress,
        run: ModeRun::default(),
    };
    let c = &args.common;
    let reps = c.reps.max(1);
    p.run.header = host_header(format!(
        "hostmem-bench plug: {} plugged and unplugged in {} blocks; medians of {reps} repetitions after {} warm-up, hostmem and the kernel in alternating order",
        format_size(size),
        format_size(block),
        c.warmup
    ));
    let before = crate::busy::CpuSnapshot::now();
    for (key, mem) in KINDS {
        if !c.wants(key) {
            continue;
        }
        let _no_thp = NoThp::new(mem == Mem::Ram4k)?;
        let _pool = if mem == Mem::MemfdHuge2m {
            Some(HugePagesGuard::reserve(size.max(plugged) / HUGE_2M)?)
        } else {
            None
        };
        for rep in 0..c.warmup + reps {
            let keep = rep >= c.warmup;
            for i in order(2, rep) {
                if p.progress.is_cancelled() {
                    return Err("interrupted".into());
                }
                prime(size, p.cpus)?;
                if i == 0 {
                    p.hostmem(key, mem, keep)?;
                } else {
                    p.kernel(key, mem, keep)?;
                }
            }
            if keep {
                p.committed(key, mem, max, plugged)?;
            }
        }
    }
    p.run.busy = before
        .zip(crate::busy::CpuSnapshot::now())
        .and_then(|(a, b)| a.until(&b));
    tables(&mut p.run, args, size, max, plugged);
    Ok(p.run)
}

fn tables(r: &mut ModeRun, args: &PlugArgs, size: u64, max: u64, plugged: u64) {
    let mib = |v: Option<f64>| crate::stats::fmt_num(v.map(|b| b / (1u64 << 20) as f64), 0);
    for (key, mem) in KINDS {
        if !args.common.wants(key) {
            continue;
        }
        let k = |m: &str| format!("plug/{key}/{m}");
        let label = mem.label();
        r.section(&format!(
            "{label}, {} (times are medians)",
            format_size(size)
        ));
        r.time_row("plug", &k("plug"), &k("prealloc"), "plain backend prealloc");
        let base = match mem {
            Mem::MemfdHuge2m | Mem::MemfdShmem => "fallocate(PUNCH_HOLE)",
            _ => "madvise(MADV_DONTNEED)",
        };
        r.time_row("unplug", &k("unplug"), &k("kernel-discard"), base);
        r.time_row(
            "unplug, thread CPU time",
            &k("unplug-cpu"),
            &k("kernel-discard-cpu"),
            base,
        );
        let samples = std::mem::take(&mut r.samples);
        let m = |x: &str| samples.median(&k(x));
        let line = format!(
            "  MiB resident (smaps): plugged {}, after unplug {}; file after unplug {}; the kernel's discard gave back {}",
            mib(m("plugged-resident")),
            mib(m("unplugged-resident")),
            mib(m("unplugged-file")),
            mib(m("kernel-freed")),
        );
        r.lines.push(line);
        if mem == Mem::RamThp {
            let line = format!(
                "  MiB in THP (smaps AnonHugePages): plugged {}, plain backend preallocated {}",
                mib(m("plugged-thp")),
                mib(m("prealloc-thp"))
            );
            r.lines.push(line);
        }
        if mem == Mem::MemfdHuge2m {
            let line = format!(
                "  HugePages_Free: {} pages taken by the plug, {} back after the unplug",
                crate::stats::fmt_num(m("pool-taken"), 0),
                crate::stats::fmt_num(m("pool-back"), 0)
            );
            r.lines.push(line);
        }
        let line = format!(
            "  Committed_AS growth with {} of a {} maximum plugged: {} MiB",
            format_size(plugged),
            format_size(max),
            mib(m("committed-growth"))
        );
        r.lines.push(line);
        let left = m("unplugged-resident").map(|b| b / (1u64 << 20) as f64);
        r.bound(
            format!("{label}: resident after unplug (smaps)"),
            left,
            0.0,
            false,
            "MiB",
        );
        if mem == Mem::MemfdHuge2m {
            let back = crate::stats::ratio(m("pool-back"), Some((size / HUGE_2M) as f64));
            r.bound(
                format!("{label}: HugePages_Free back / plugged"),
                back,
                1.0,
                true,
                "×",
            );
        }
        let growth = m("committed-growth").map(|b| b / (1u64 << 20) as f64);
        let bound = (plugged >> 20) as f64;
        r.samples = samples;
        r.speed_target(
            format!("{label}: plug / plain prealloc (rate)"),
            &k("plug"),
            &k("prealloc"),
            0.8,
        );
        r.time_ratio_max(
            format!("{label}: unplug / kernel discard (time)"),
            &k("unplug"),
            &k("kernel-discard"),
            1.2,
        );
        r.time_ratio_max(
            format!("{label}: unplug / kernel discard (thread CPU)"),
            &k("unplug-cpu"),
            &k("kernel-discard-cpu"),
            1.2,
        );
        r.bound(
            format!("{label}: Committed_AS growth"),
            growth,
            bound,
            false,
            "MiB",
        );
    }
}
