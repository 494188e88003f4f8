//! `hostmem bench`: preallocation speed against QEMU 7.2 and against memset, in one run.
//!
//! The host this runs on may itself be a VM whose memory grows on first touch, and may
//! hand freed memory back to its host after a few idle seconds: absolute times drift.
//! So the bench warms up first, interleaves every tool inside each repetition (and flips
//! their order every other repetition), and reports medians and ratios measured in the
//! same run. Process runs are timed whole (startup included) for hostmem and QEMU alike;
//! per-GiB rates subtract each tool's own startup with the same objects, prealloc=off.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use clap::Args;
use hostmem::numa::HugePool;
use hostmem::size::{format_size, parse_size};
use hostmem::{Backend, InUse, MachineDefaults, ObjectSpec, Progress};
use serde_json::{json, Value};

use crate::report;
use crate::signals::{self, Stop};

pub const EXAMPLES: &str = "Examples:
  hostmem bench                         4 GiB backends, 5 repetitions (a few minutes)
  hostmem bench --size 256M --reps 1    a quick smoke run
  hostmem bench --json                  medians, ratios and targets as one JSON document";

const GIB: f64 = (1u64 << 30) as f64;
const HUGE_2M: u64 = 2 << 20;
/// QEMU 7.2 on a machine that does nothing: it creates (and preallocates) the objects,
/// then the monitor reads `quit` from stdin and the process exits by itself.
const QEMU_ARGS: &[&str] = &[
    "-machine",
    "none",
    "-nodefaults",
    "-display",
    "none",
    "-qmp",
    "stdio",
];
const QEMU_INPUT: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";
/// How the 4 KiB case is made, printed with the results.
const FOUR_K_HOW: &str = "4 KiB pages for memory-backend-ram: THP disabled for the bench and the processes it starts with prctl(PR_SET_THP_DISABLE); hostmem and QEMU both still advise MADV_HUGEPAGE";

#[derive(Args)]
pub struct BenchArgs {
    /// Repetitions measured (interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Unmeasured repetitions first, so memory the host has not backed yet is touched.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Backend size (the four-backend case uses a quarter each).
    #[arg(long, default_value = "4G")]
    size: String,
    /// QEMU binary to compare with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

/// The memory configurations measured one backend at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mem {
    RamThp,
    Ram4k,
    MemfdHuge2m,
    MemfdShmem,
}

impl Mem {
    const ALL: [Mem; 4] = [Mem::RamThp, Mem::Ram4k, Mem::MemfdHuge2m, Mem::MemfdShmem];

    fn label(self) -> &'static str {
        match self {
            Mem::RamThp => "ram THP",
            Mem::Ram4k => "ram 4 KiB",
            Mem::MemfdHuge2m => "memfd hugetlb 2 MiB",
            Mem::MemfdShmem => "memfd shmem",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mem::RamThp => "ram-thp",
            Mem::Ram4k => "ram-4k",
            Mem::MemfdHuge2m => "memfd-2m",
            Mem::MemfdShmem => "memfd-shmem",
        }
    }

    /// The same `-object` text is given to hostmem and to QEMU.
    fn spec(self, id: &str, size: u64, prealloc: bool, threads: usize) -> String {
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

/// The middle value (mean of the two middle ones for an even count); NaNs are dropped.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// `a / b` where both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio as people read it: `1.23×`, or `n/a` when it could not be measured.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×"))
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

/// GiB/s of `bytes` done in `secs` beyond a startup baseline; None when the difference
/// is lost in noise (not positive).
pub fn rate_beyond(bytes: u64, secs: f64, baseline: f64) -> Option<f64> {
    let t = secs - baseline;
    (t > 0.0).then(|| bytes as f64 / GIB / t)
}

/// Samples per metric, in the order measured.
#[derive(Default)]
struct Samples(BTreeMap<String, Vec<f64>>);

impl Samples {
    fn push(&mut self, key: String, v: Option<f64>) {
        self.0.entry(key).or_default().push(v.unwrap_or(f64::NAN));
    }

    fn median(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(|v| median(v))
    }

    /// Ratio of two metrics' medians.
    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        ratio(self.median(a), self.median(b))
    }
}

/// What the run measures and with what.
struct Plan {
    size: u64,
    threads: Vec<usize>,
    exe: std::path::PathBuf,
    qemu: String,
}

/// Stops the bench between measurements after SIGINT/SIGTERM (the running prealloc is
/// cancelled through `progress`; the children get the terminal's signal themselves).
struct Ctx {
    plan: Plan,
    progress: Arc<Progress>,
    stop: Receiver<Stop>,
    samples: Samples,
    thp_seen_4k: u64,
}

impl Ctx {
    fn check_stop(&self) -> Result<(), String> {
        match self.stop.try_recv() {
            Ok(Stop::Signal(s)) => Err(format!("interrupted by signal {s}")),
            _ if self.progress.is_cancelled() => Err("interrupted".into()),
            _ => Ok(()),
        }
    }
}

/// Sets the 2 MiB pool big enough for one backend and puts the old size back when
/// dropped: at the end, on an error, and after Ctrl-C (which ends the bench by error).
struct HugePagesGuard {
    restore: Option<u64>,
}

impl HugePagesGuard {
    fn reserve(pages: u64) -> Result<Self, String> {
        let pool = HugePool::read(HUGE_2M, None)
            .ok_or("this host has no 2 MiB huge page pool (/sys/kernel/mm/hugepages)")?;
        if pool.available() >= pages {
            return Ok(Self { restore: None });
        }
        let want = pool.total + pages - pool.available();
        let guard = Self {
            restore: Some(pool.total),
        };
        let got = HugePool::set_total(HUGE_2M, None, want)
            .map_err(|e| format!("cannot set nr_hugepages to {want}: {e}"))?;
        if got < want {
            return Err(format!(
                "asked the kernel for {want} huge pages of 2 MiB, it made {got}"
            ));
        }
        Ok(guard)
    }
}

impl Drop for HugePagesGuard {
    fn drop(&mut self) {
        if let Some(total) = self.restore.take() {
            if let Err(e) = HugePool::set_total(HUGE_2M, None, total) {
                eprintln!("hostmem bench: could not restore nr_hugepages to {total}: {e}");
            }
        }
    }
}

/// THP off for this process and its children while alive (the 4 KiB case).
struct NoThp;

impl NoThp {
    fn new(on: bool) -> Result<Option<NoThp>, String> {
        if !on {
            return Ok(None);
        }
        hostmem::sys::set_thp_disabled(true)
            .map_err(|e| format!("prctl(PR_SET_THP_DISABLE): {e}"))?;
        Ok(Some(NoThp))
    }
}

impl Drop for NoThp {
    fn drop(&mut self) {
        let _ = hostmem::sys::set_thp_disabled(false);
    }
}

/// Wall time of a whole process, from spawn to exit; `input` is its stdin.
fn time_process(mut cmd: Command, input: &[u8]) -> Result<f64, String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let name = cmd.get_program().to_string_lossy().into_owned();
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {name}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A process that exits without reading its input is no error here.
        let _ = stdin.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{name}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{name} failed ({}): {}", out.status, err.trim()));
    }
    Ok(secs)
}

fn hostmem_cmd(plan: &Plan, specs: &[String]) -> Command {
    let mut c = Command::new(&plan.exe);
    c.arg("run");
    for s in specs {
        c.arg("--object").arg(s);
    }
    c
}

fn qemu_cmd(plan: &Plan, specs: &[String]) -> Command {
    let mut c = Command::new(&plan.qemu);
    c.args(QEMU_ARGS);
    for s in specs {
        c.arg("-object").arg(s);
    }
    c
}

/// Times `hostmem run` and QEMU with the same objects, in an order that flips with the
/// repetition so neither tool always runs on memory the other just freed.
///
/// Each run is primed: on this host memory freed a few seconds ago may have been handed
/// back to the hypervisor and costs several times more to touch again, and without the
/// primer whichever tool ran first got that cold memory and the second the warm memory
/// the first had just freed. The primer touches and frees as much memory as the run
/// needs right before it, so both tools start alike.
fn time_both(plan: &Plan, specs: &[String], rep: usize) -> Result<(f64, f64), String> {
    let bytes = specs_bytes(specs);
    let run_hm = || {
        prime(bytes)?;
        time_process(hostmem_cmd(plan, specs), b"")
    };
    let run_qemu = || {
        prime(bytes)?;
        time_process(qemu_cmd(plan, specs), QEMU_INPUT)
    };
    if rep.is_multiple_of(2) {
        let h = run_hm()?;
        Ok((h, run_qemu()?))
    } else {
        let q = run_qemu()?;
        Ok((run_hm()?, q))
    }
}

/// Bytes the objects ask for (those with prealloc=on).
fn specs_bytes(specs: &[String]) -> u64 {
    specs
        .iter()
        .filter(|s| s.contains("prealloc=on"))
        .filter_map(|s| ObjectSpec::parse(s).ok())
        .filter_map(|o| o.props.iter().find(|(k, _)| k == "size").cloned())
        .filter_map(|(_, v)| parse_size(&v))
        .sum()
}

/// Touches `bytes` of anonymous memory with all CPUs and frees it again (see
/// [`time_both`]).
fn prime(bytes: u64) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    let threads = hostmem::sys::allowed_cpus().len().max(1);
    let spec =
        format!("memory-backend-ram,id=primer,size={bytes},prealloc=on,prealloc-threads={threads}");
    make_backend(&spec, &Progress::new()).map(drop)
}

/// [start, end) of part `i` of `n` of `len` bytes, on `page` boundaries.
fn part(len: usize, page: usize, n: usize, i: usize) -> (usize, usize) {
    let pages = len / page;
    (pages * i / n * page, pages * (i + 1) / n * page)
}

/// memset bandwidth over memory already faulted in, split across `threads` threads that
/// start together: the ceiling for zeroing pages with the same threads.
fn memset_gibs(mem: &InUse, threads: usize) -> Result<f64, String> {
    let (len, page) = (mem.len(), mem.page_size() as usize);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (a, b) = part(len, page, threads, i);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    mem.fill(a, b - a, 0x5a)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for w in workers {
            w.join()
                .map_err(|_| "memset thread panicked".to_string())?
                .map_err(|e| format!("memset: {e}"))?;
        }
        Ok(len as f64 / GIB / start.elapsed().as_secs_f64())
    })
}

fn make_backend(spec: &str, progress: &Progress) -> Result<Backend, String> {
    let mut b = ObjectSpec::parse(spec)
        .and_then(|s| s.to_backend(&MachineDefaults::default()))
        .map_err(|e| e.to_string())?;
    b.complete_with(progress).map_err(|e| e.to_string())?;
    Ok(b)
}

/// Milliseconds one call of `f` takes.
fn time_ms<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64() * 1e3)
}

/// The library in this process: prealloc GiB/s from its own stats, memset on the same
/// memory, and for the ram kinds the cost of the kernel-read report.
/// The caller keeps THP off for the 4 KiB case (a guard here would turn it back on for
/// the caller's later child processes when dropped).
fn in_process(ctx: &mut Ctx, mem: Mem, threads: usize, report: bool) -> Result<(), String> {
    let spec = mem.spec("bench0", ctx.plan.size, true, threads);
    let b = make_backend(&spec, &ctx.progress)?;
    let key = format!("{}/{threads}", mem.key());
    let gibs = b.prealloc_stats().map(|s| s.gib_per_sec());
    ctx.samples.push(format!("{key}/inproc"), gibs);
    let held = b.hold().map_err(|e| e.to_string())?;
    let fill = memset_gibs(&held, threads)?;
    drop(held);
    ctx.samples.push(format!("{key}/memset"), Some(fill));
    if report {
        let (view, ms) = time_ms(|| b.inspect());
        let view = view.map_err(|e| e.to_string())?;
        if mem == Mem::Ram4k {
            ctx.thp_seen_4k = ctx.thp_seen_4k.max(view.thp);
        }
        ctx.samples
            .push(format!("report/{}/inspect", mem.key()), Some(ms));
        let (_, ms) = time_ms(|| report::backend_json(&b));
        ctx.samples
            .push(format!("report/{}/json", mem.key()), Some(ms));
    }
    Ok(())
}

/// One backend of one kind: startup baselines, then per thread count hostmem run,
/// QEMU and the in-process engine with memset.
fn single(ctx: &mut Ctx, mem: Mem, rep: usize) -> Result<(), String> {
    let _no_thp = NoThp::new(mem == Mem::Ram4k)?;
    let size = ctx.plan.size;
    let threads = ctx.plan.threads.clone();
    let off = [mem.spec("m0", size, false, threads[0])];
    let (base_h, base_q) = time_both(&ctx.plan, &off, rep)?;
    let k = mem.key();
    ctx.samples.push(format!("{k}/base-run"), Some(base_h));
    ctx.samples.push(format!("{k}/base-qemu"), Some(base_q));
    for &t in &threads {
        ctx.check_stop()?;
        let on = [mem.spec("m0", size, true, t)];
        let (h, q) = time_both(&ctx.plan, &on, rep)?;
        ctx.samples
            .push(format!("{k}/{t}/run"), rate_beyond(size, h, base_h));
        ctx.samples
            .push(format!("{k}/{t}/qemu"), rate_beyond(size, q, base_q));
        let report = t == *threads.last().unwrap_or(&1) && matches!(mem, Mem::RamThp | Mem::Ram4k);
        in_process(ctx, mem, t, report)?;
    }
    Ok(())
}

/// Four backends of a quarter size each, prealloc-threads=1, created together.
fn four(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    let each = ctx.plan.size / 4 / HUGE_2M * HUGE_2M;
    let specs = |on| -> Vec<String> {
        (0..4)
            .map(|i| Mem::RamThp.spec(&format!("m{i}"), each, on, 1))
            .collect()
    };
    let (base_h, base_q) = time_both(&ctx.plan, &specs(false), rep)?;
    let (h, q) = time_both(&ctx.plan, &specs(true), rep)?;
    ctx.samples
        .push("four/run".into(), rate_beyond(4 * each, h, base_h));
    ctx.samples
        .push("four/qemu".into(), rate_beyond(4 * each, q, base_q));
    Ok(())
}

/// `hostmem run` of a preallocated 2 MiB backend against QEMU starting with it.
fn end_to_end(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    let spec = [Mem::RamThp.spec("m0", HUGE_2M, true, 1)];
    let (h, q) = time_both(&ctx.plan, &spec, rep)?;
    ctx.samples.push("e2e/run".into(), Some(h * 1e3));
    ctx.samples.push("e2e/qemu".into(), Some(q * 1e3));
    Ok(())
}

fn repetition(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    for mem in Mem::ALL {
        ctx.check_stop()?;
        single(ctx, mem, rep)?;
    }
    ctx.check_stop()?;
    four(ctx, rep)?;
    ctx.check_stop()?;
    end_to_end(ctx, rep)
}

/// One target: what is compared, the bound, and the measured value.
struct Target {
    what: String,
    measured: Option<f64>,
    bound: f64,
    /// True: measured must be at least `bound`; false: at most.
    at_least: bool,
    unit: &'static str,
}

impl Target {
    fn pass(&self) -> bool {
        self.measured.is_some_and(|m| {
            if self.at_least {
                m >= self.bound
            } else {
                m <= self.bound
            }
        })
    }

    fn line(&self) -> String {
        let verdict = if self.pass() { "PASS" } else { "MISS" };
        let cmp = if self.at_least { "≥" } else { "≤" };
        let v = |x: f64| match self.unit {
            "×" => format!("{x:.2}×"),
            u => format!("{x:.1} {u}"),
        };
        let measured = self.measured.map_or("n/a".to_string(), v);
        format!(
            "  {verdict}  {:<46} {cmp} {:<8} measured {measured}",
            self.what,
            v(self.bound)
        )
    }

    fn json(&self) -> Value {
        json!({"target": self.what, "bound": self.bound, "at-least": self.at_least,
               "unit": self.unit, "measured": self.measured, "pass": self.pass()})
    }
}

fn targets(s: &Samples, threads: &[usize], size: u64) -> Vec<Target> {
    let mut out = Vec::new();
    let at_least = |what: String, measured, bound, unit| Target {
        what,
        measured,
        bound,
        at_least: true,
        unit,
    };
    for mem in Mem::ALL {
        for t in threads {
            let k = format!("{}/{t}", mem.key());
            let r = s.ratio(&format!("{k}/run"), &format!("{k}/qemu"));
            let what = format!("{} {t} thr: hostmem / QEMU GiB/s", mem.label());
            out.push(at_least(what, r, 0.95, "×"));
        }
    }
    let what = "four backends together: hostmem / QEMU GiB/s";
    out.push(at_least(
        what.into(),
        s.ratio("four/run", "four/qemu"),
        1.6,
        "×",
    ));
    for t in threads {
        let k = format!("ram-thp/{t}");
        let r = s.ratio(&format!("{k}/inproc"), &format!("{k}/memset"));
        let what = format!("ram THP {t} thr: prealloc / memset GiB/s");
        out.push(at_least(what, r, 0.6, "×"));
    }
    let what = "2 MiB end to end: QEMU time / hostmem time";
    out.push(at_least(
        what.into(),
        s.ratio("e2e/qemu", "e2e/run"),
        5.0,
        "×",
    ));
    for mem in [Mem::Ram4k, Mem::RamThp] {
        out.push(Target {
            what: format!(
                "report of {} {}: backend_json",
                format_size(size),
                mem.label()
            ),
            measured: s.median(&format!("report/{}/json", mem.key())),
            bound: 20.0,
            at_least: false,
            unit: "ms",
        });
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn qemu_version(qemu: &str) -> String {
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

fn header(ctx: &Ctx, reps: usize, warmup: usize) -> String {
    let p = &ctx.plan;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "hostmem bench: {} per backend, medians of {reps} interleaved repetitions after {warmup} warm-up, threads {:?}",
        format_size(p.size),
        p.threads
    );
    let _ = writeln!(
        s,
        "host: {}, Linux {}; absolute numbers vary with the host, ratios are from this run",
        cpu_model(),
        hostmem::sys::kernel_release()
    );
    let _ = writeln!(s, "QEMU: {}", qemu_version(&p.qemu));
    let _ = writeln!(
        s,
        "{FOUR_K_HOW} (THP bytes seen in the 4 KiB backend: {})",
        ctx.thp_seen_4k
    );
    s.push_str("process runs are timed whole; GiB/s = size / (time - same tool's time with prealloc=off)\n");
    s
}

fn single_table(s: &Samples, threads: &[usize]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<22}{:>4} {:>12} {:>10} {:>9} {:>11} {:>9} {:>10}",
        "prealloc GiB/s",
        "thr",
        "hostmem run",
        "QEMU 7.2",
        "hm/QEMU",
        "in-process",
        "memset",
        "pre/memset"
    );
    for mem in Mem::ALL {
        for t in threads {
            let k = format!("{}/{t}", mem.key());
            let m = |x: &str| s.median(&format!("{k}/{x}"));
            let _ = writeln!(
                out,
                "{:<22}{:>4} {:>12} {:>10} {:>9} {:>11} {:>9} {:>10}",
                mem.label(),
                t,
                fmt_num(m("run"), 2),
                fmt_num(m("qemu"), 2),
                fmt_ratio(ratio(m("run"), m("qemu"))),
                fmt_num(m("inproc"), 2),
                fmt_num(m("memset"), 2),
                fmt_ratio(ratio(m("inproc"), m("memset"))),
            );
        }
    }
    out
}

fn other_tables(s: &Samples, size: u64) -> String {
    let mut out = String::new();
    let ms = |k: &str| fmt_num(s.median(k), 1);
    let _ = writeln!(
        out,
        "\nstartup with prealloc=off, ms        hostmem run   QEMU 7.2"
    );
    for mem in Mem::ALL {
        let k = mem.key();
        let (h, q) = (
            s.median(&format!("{k}/base-run")).map(|x| x * 1e3),
            s.median(&format!("{k}/base-qemu")).map(|x| x * 1e3),
        );
        let _ = writeln!(
            out,
            "  {:<34} {:>11} {:>10}",
            mem.label(),
            fmt_num(h, 1),
            fmt_num(q, 1)
        );
    }
    let four = (s.median("four/run"), s.median("four/qemu"));
    let _ = writeln!(
        out,
        "\nfour backends of {} together, prealloc-threads=1: hostmem {} GiB/s, QEMU {} GiB/s, {}",
        format_size(size / 4 / HUGE_2M * HUGE_2M),
        fmt_num(four.0, 2),
        fmt_num(four.1, 2),
        fmt_ratio(ratio(four.0, four.1))
    );
    let (h, q) = (s.median("e2e/run"), s.median("e2e/qemu"));
    let _ = writeln!(
        out,
        "end to end, 2 MiB ram backend: hostmem run {} ms, QEMU startup {} ms, hostmem {} faster",
        ms("e2e/run"),
        ms("e2e/qemu"),
        fmt_ratio(ratio(q, h))
    );
    let _ = writeln!(
        out,
        "report of a preallocated {} backend, ms: 4 KiB inspect {} / backend_json {}; THP inspect {} / backend_json {}",
        format_size(size),
        ms("report/ram-4k/inspect"),
        ms("report/ram-4k/json"),
        ms("report/ram-thp/inspect"),
        ms("report/ram-thp/json"),
    );
    out
}

fn text_output(ctx: &Ctx, reps: usize, warmup: usize) -> String {
    let s = &ctx.samples;
    let mut out = header(ctx, reps, warmup);
    out.push_str(&single_table(s, &ctx.plan.threads));
    out.push_str(&other_tables(s, ctx.plan.size));
    out.push_str("\ntargets (medians)\n");
    for t in targets(s, &ctx.plan.threads, ctx.plan.size) {
        out.push_str(&t.line());
        out.push('\n');
    }
    out
}

fn json_output(ctx: &Ctx, reps: usize, warmup: usize) -> Value {
    let s = &ctx.samples;
    let medians: serde_json::Map<String, Value> =
        s.0.keys()
            .map(|k| (k.clone(), json!(s.median(k))))
            .collect();
    json!({
        "size": ctx.plan.size,
        "reps": reps,
        "warmup": warmup,
        "threads": ctx.plan.threads,
        "cpu": cpu_model(),
        "kernel": hostmem::sys::kernel_release(),
        "qemu": qemu_version(&ctx.plan.qemu),
        "four-kib-pages": FOUR_K_HOW,
        "thp-bytes-in-4k-backend": ctx.thp_seen_4k,
        "medians": medians,
        "samples": s.0,
        "targets": targets(s, &ctx.plan.threads, ctx.plan.size).iter().map(Target::json).collect::<Vec<_>>(),
    })
}

fn make_plan(args: &BenchArgs) -> Result<Plan, String> {
    let size = parse_size(&args.size)
        .filter(|&s| s >= 8 * HUGE_2M)
        .ok_or_else(|| format!("--size {}: expected a size of at least 16M", args.size))?;
    let size = size / (4 * HUGE_2M) * (4 * HUGE_2M);
    let cpus = hostmem::sys::allowed_cpus().len().max(1);
    let mut threads = vec![1];
    if cpus > 1 {
        threads.push(cpus);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    if Command::new(&args.qemu).arg("--version").output().is_err() {
        return Err(format!(
            "{} not found: install QEMU (Debian: apt-get install qemu-system-x86) or pass --qemu",
            args.qemu
        ));
    }
    Ok(Plan {
        size,
        threads,
        exe,
        qemu: args.qemu.clone(),
    })
}

fn run(args: &BenchArgs) -> Result<String, String> {
    let plan = make_plan(args)?;
    let progress = Arc::new(Progress::new());
    let events = signals::install(progress.clone()).map_err(|e| format!("signals: {e}"))?;
    let _pool = HugePagesGuard::reserve(plan.size / HUGE_2M)?;
    let mut ctx = Ctx {
        plan,
        progress,
        stop: events.rx,
        samples: Samples::default(),
        thp_seen_4k: 0,
    };
    for w in 0..args.warmup {
        repetition(&mut ctx, w)?;
    }
    ctx.samples = Samples::default();
    ctx.thp_seen_4k = 0;
    for rep in 0..args.reps.max(1) {
        repetition(&mut ctx, rep)?;
    }
    let reps = args.reps.max(1);
    Ok(if args.json {
        format!("{}\n", json_output(&ctx, reps, args.warmup))
    } else {
        text_output(&ctx, reps, args.warmup)
    })
}

pub fn main(args: BenchArgs) -> ExitCode {
    match run(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostmem bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios_format_and_guard_division() {
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(2.0))), "1.50×");
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(0.0))), "n/a");
        assert_eq!(fmt_ratio(ratio(None, Some(1.0))), "n/a");
    }

    #[test]
    fn rate_subtracts_the_baseline() {
        let r = rate_beyond(4 << 30, 1.1, 0.1).unwrap();
        assert!((r - 4.0).abs() < 1e-9);
        assert_eq!(rate_beyond(1 << 30, 0.1, 0.2), None);
    }

    #[test]
    fn same_spec_for_both_tools() {
        let s = Mem::MemfdHuge2m.spec("m0", 1 << 30, true, 2);
        assert_eq!(s, "memory-backend-memfd,id=m0,size=1073741824,hugetlb=on,hugetlbsize=2M,prealloc=on,prealloc-threads=2");
        assert!(ObjectSpec::parse(&s).is_ok());
    }

    #[test]
    fn primer_size_counts_preallocated_objects_only() {
        let specs = [
            Mem::RamThp.spec("a", 1 << 30, true, 1),
            Mem::MemfdShmem.spec("b", 1 << 30, false, 1),
        ];
        assert_eq!(specs_bytes(&specs), 1 << 30);
    }

    #[test]
    fn parts_cover_the_range_on_page_boundaries() {
        let (len, page) = (10 * 4096, 4096);
        assert_eq!(part(len, page, 3, 0), (0, 3 * 4096));
        assert_eq!(part(len, page, 3, 2).1, len);
    }

    #[test]
    fn target_verdicts() {
        let t = Target {
            what: "x".into(),
            measured: Some(19.0),
            bound: 20.0,
            at_least: false,
            unit: "ms",
        };
        assert!(t.pass() && t.line().contains("PASS"));
        let t = Target {
            measured: None,
            at_least: true,
            ..t
        };
        assert!(!t.pass() && t.line().contains("MISS"));
    }
}
