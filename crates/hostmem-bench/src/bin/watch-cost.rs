//! `watch-cost`: what watching the memory limits costs a preallocation (issue 11).
//!
//! The library reads the relevant limits (one meminfo per bound node or the host's,
//! the cgroup's files) before every 16 MiB prealloc step, and checks the batch against
//! them before mapping. This times `Backend::complete` of the same backend with the
//! watch on (the default) and off (`ignore_memory_limits`), side by side in one run:
//! one warm-up round first (the host may be a VM whose memory grows on first touch),
//! then every repetition runs each case once unmeasured (after another case's 4 KiB
//! pages the first THP run pays for compaction) and then on and off, in an order
//! flipped every other repetition. Medians, their on/off ratio and the median of the
//! ratios within each repetition are printed.
//!
//! Cases: memory-backend-ram with THP (the library advises MADV_HUGEPAGE), ram with
//! 4 KiB pages (THP disabled for this process with PR_SET_THP_DISABLE), and
//! memory-backend-memfd (shmem: 4 KiB pages unless shmem THP is on). It changes no
//! huge page pool. Not run by `cargo test`; run it by hand on a quiet host:
//! `cargo run --release -p hostmem-bench --bin watch-cost -- --size 4G --reps 5`.
#![forbid(unsafe_code)]

use std::time::Instant;

use clap::Parser;
use hostmem::size::parse_size;
use hostmem::{Backend, Kind, Progress};
use rustix::thread::disable_transparent_huge_pages;

#[derive(Parser)]
#[command(name = "watch-cost")]
struct Args {
    /// Backend size.
    #[arg(long, default_value = "4G")]
    size: String,
    /// Measured repetitions (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Unmeasured rounds first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// prealloc-threads (2: both CPUs of the reference machine).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Print every sample on stderr as it is taken.
    #[arg(long)]
    verbose: bool,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    kind: Kind,
    thp: bool,
}

const CASES: [Case; 3] = [
    Case {
        name: "ram, THP",
        kind: Kind::Ram,
        thp: true,
    },
    Case {
        name: "ram, 4 KiB",
        kind: Kind::Ram,
        thp: false,
    },
    Case {
        name: "memfd",
        kind: Kind::Memfd,
        thp: true,
    },
];

/// Seconds `complete` takes (check, map, prealloc), and the prealloc's own seconds.
fn once(case: Case, size: u64, threads: u32, watch: bool) -> Result<(f64, f64), String> {
    disable_transparent_huge_pages(!case.thp).map_err(|e| format!("PR_SET_THP_DISABLE: {e}"))?;
    let mut b = Backend::builder(case.kind, "w")
        .size(size)
        .prealloc(true)
        .prealloc_threads(threads)
        .ignore_memory_limits(!watch)
        .build()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    b.complete_with(&Progress::new())
        .map_err(|e| e.to_string())?;
    let whole = start.elapsed().as_secs_f64();
    let pre = b.prealloc_stats().map_or(0.0, |s| s.seconds);
    b.delete().map_err(|e| e.to_string())?;
    Ok((whole, pre))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let size = parse_size(&args.size).ok_or_else(|| format!("--size {}", args.size))?;
    // [case][on/off] -> (whole, prealloc) samples
    let mut samples = vec![[Vec::new(), Vec::new()]; CASES.len()];
    for rep in 0..args.warmup + args.reps {
        for (c, case) in CASES.iter().enumerate() {
            let order = if rep % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            // Unmeasured first: after another case's 4 KiB pages the first THP run pays
            // for compaction, whichever of on/off comes first.
            once(*case, size, args.threads, order[1])?;
            for watch in order {
                let s = once(*case, size, args.threads, watch)?;
                if args.verbose {
                    eprintln!(
                        "rep {rep} {:<10} watch {:<3} {:.3} s",
                        case.name,
                        if watch { "on" } else { "off" },
                        s.1
                    );
                }
                if rep >= args.warmup {
                    samples[c][usize::from(!watch)].push(s);
                }
            }
        }
    }
    println!(
        "prealloc of {} with {} threads, {} repetitions after {} warm-up (medians, seconds)",
        hostmem::size::format_size(size),
        args.threads,
        args.reps,
        args.warmup
    );
    println!(
        "{:<12} {:>10} {:>10} {:>8}   {:>10} {:>10} {:>8}   {:>14}",
        "case", "on", "off", "on/off", "prealloc on", "off", "on/off", "paired on/off"
    );
    for (c, case) in CASES.iter().enumerate() {
        let pick = |i: usize, f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = samples[c][i].iter().map(f).collect();
            median(&mut v)
        };
        let (won, woff) = (pick(0, |s| s.0), pick(1, |s| s.0));
        let (pon, poff) = (pick(0, |s| s.1), pick(1, |s| s.1));
        // The ratio within each repetition (the two runs side by side), then its median.
        let mut paired: Vec<f64> = samples[c][0]
            .iter()
            .zip(&samples[c][1])
            .map(|(on, off)| on.1 / off.1)
            .collect();
        println!(
            "{:<12} {won:>10.3} {woff:>10.3} {:>8.4}   {pon:>10.3} {poff:>10.3} {:>8.4}   {:>14.4}",
            case.name,
            won / woff,
            pon / poff,
            median(&mut paired)
        );
    }
    Ok(())
}
