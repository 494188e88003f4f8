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

mod args;
mod busy;
mod clones;
mod diffcase;
mod guards;
mod inproc;
mod kernel;
mod lazycase;
mod measure;
mod modereport;
mod modes;
mod pattern;
mod plan;
mod plugmode;
mod report;
mod runner;
mod scrape;
mod snap;
mod snapreport;
mod stats;
mod targets;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hostmem::Progress;
use hostmem_cli::signals;
use rustix::thread::sched_getaffinity;

use args::BenchArgs;
use guards::HugePagesGuard;
use measure::{repetition, Ctx};
use plan::{make_plan, HUGE_2M};
use stats::Samples;

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
    if let Some(code) = scrape::dispatch() {
        return code;
    }
    let args = BenchArgs::parse();
    let out = match &args.mode {
        Some(mode) => modes::run(mode),
        None => run(&args),
    };
    match out {
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
