//! `hostmem-bench`: preallocation speed of `hostmem run` against QEMU (the reference is
//! 10.0) and against memset, in one run (docs/bench.md), including a libvirt-style
//! line (one `thread-context` per backend, named by its `prealloc-context`). A separate program, not a subcommand of
//! `hostmem`: it runs QEMU, resizes the huge page pool and turns THP off, none of which
//! belongs in the product binary.
//!
//! The host this runs on may itself be a VM whose memory grows on first touch, and may
//! hand freed memory back to its host after a few idle seconds: absolute times drift.
//! So the bench warms up first, interleaves every tool inside each repetition (and flips
//! their order every other repetition), and reports medians and ratios measured in the
//! same run. Process runs are timed whole (startup included) for hostmem and QEMU alike;
//! per-GiB rates subtract each tool's own startup with the same objects, prealloc=off.
//!
//! No unsafe code: syscalls the library does not offer come from rustix.
#![forbid(unsafe_code)]

mod busy;
mod guards;
mod inproc;
mod measure;
mod plan;
mod report;
mod runner;
mod stats;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hostmem::Progress;
use hostmem_cli::signals;
use rustix::thread::sched_getaffinity;

use guards::HugePagesGuard;
use measure::{repetition, Ctx};
use plan::{make_plan, HUGE_2M};
use stats::Samples;

const EXAMPLES: &str = "Examples:
  hostmem-bench                         4 GiB backends, 1 warm-up + 5 repetitions (~9 min on 2 vCPUs)
  hostmem-bench --size 2G               a shorter profile (~5 min)
  hostmem-bench --size 256M --reps 1    a quick smoke run
  hostmem-bench --save-json run.json    tables on stdout, medians, samples and targets in run.json
  hostmem-bench --json                  medians, ratios and targets as one JSON document";

/// Preallocation speed against QEMU and memset, medians and ratios from one run.
#[derive(Parser)]
#[command(name = "hostmem-bench", version, after_help = EXAMPLES)]
pub struct BenchArgs {
    /// Repetitions measured (interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Unmeasured repetitions first, so memory the host has not backed yet is touched.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Backend size (the four-backend case uses a quarter each, the libvirt-style case
    /// shares it among its backends).
    #[arg(long, default_value = "4G")]
    size: String,
    /// Backends in the libvirt-style line, each with its own thread-context.
    #[arg(long, default_value_t = 2)]
    libvirt_backends: usize,
    /// Times the libvirt-style case runs in each repetition (its samples are pooled).
    #[arg(long, default_value_t = 3)]
    libvirt_rounds: usize,
    /// QEMU binary to compare with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// The hostmem binary to time (default: the `hostmem` next to this program, as
    /// `cargo build` puts them).
    #[arg(long)]
    hostmem: Option<PathBuf>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON document (medians, every sample, targets) to this file, so a
    /// run printed as tables keeps its samples.
    #[arg(long, value_name = "FILE")]
    save_json: Option<PathBuf>,
}

/// CPUs this process may run on (its affinity mask, as the library's default
/// prealloc-threads counts them; not `available_parallelism`, which also applies cgroup
/// quotas), at least 1.
fn allowed_cpus() -> usize {
    sched_getaffinity(None).map_or(1, |set| set.count().max(1) as usize)
}

fn run(args: &BenchArgs) -> Result<String, String> {
    let cpus = allowed_cpus();
    let plan = make_plan(args, cpus)?;
    let progress = Arc::new(Progress::new());
    let events = signals::install(progress.clone()).map_err(|e| format!("signals: {e}"))?;
    let _pool = HugePagesGuard::reserve(plan.size / HUGE_2M)?;
    let mut ctx = Ctx {
        plan,
        progress,
        stop: events.rx,
        samples: Samples::default(),
        thp_seen_4k: 0,
        busy: None,
    };
    for w in 0..args.warmup {
        repetition(&mut ctx, w)?;
    }
    ctx.samples = Samples::default();
    ctx.thp_seen_4k = 0;
    let reps = args.reps.max(1);
    let before = busy::CpuSnapshot::now();
    for rep in 0..reps {
        repetition(&mut ctx, rep)?;
    }
    ctx.busy = before
        .zip(busy::CpuSnapshot::now())
        .and_then(|(a, b)| a.until(&b));
    let json = format!("{}\n", report::json_output(&ctx, reps, args.warmup));
    if let Some(path) = &args.save_json {
        std::fs::write(path, &json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if args.json {
        json
    } else {
        report::text_output(&ctx, reps, args.warmup)
    })
}

fn main() -> ExitCode {
    match run(&BenchArgs::parse()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostmem-bench: {e}");
            ExitCode::from(1)
        }
    }
}
