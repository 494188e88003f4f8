//! `hostmem-bench scrape`: what the exporter's placement reading of a VM's memory costs
//! (issue 23, docs/bench.md "Scrape"), side by side in one run with a single
//! numa_maps read of the same range: a 4 GiB 4 KiB-page report, 8 VMs × 4 GiB, and a
//! 64 GiB range partly touched, each against its target.
//!
//! Its own subcommand in files of its own: the preallocation bench's arguments and
//! runs are untouched; `main` only hands `scrape` over here.

mod cases;
mod hold;

use std::process::ExitCode;

use clap::Parser;

const EXAMPLES: &str = "Examples:
  hostmem-bench scrape                       4 GiB, 8 x 4 GiB and 64 GiB (12 GiB touched), 5 repetitions
  hostmem-bench scrape --big-touched 4G      touch less of the 64 GiB range (RAM is short)
  hostmem-bench scrape --reps 1 --vms 2      a quick smoke run";

/// The placement reading's cost against one numa_maps walk, per the targets.
#[derive(Parser)]
#[command(name = "hostmem-bench scrape", after_help = EXAMPLES)]
pub(crate) struct ScrapeArgs {
    /// Measured repetitions (interleaved; medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Size of each VM's memory (4 KiB pages).
    #[arg(long, default_value = "4G")]
    vm_size: String,
    /// VMs read in one scrape.
    #[arg(long, default_value_t = 8)]
    vms: usize,
    /// Size of the large range.
    #[arg(long, default_value = "64G")]
    big_size: String,
    /// Bytes touched in the large range (2 MiB blocks spread over it); lowered to
    /// what the host can give (MemAvailable less 4 GiB), which is printed.
    #[arg(long, default_value = "12G")]
    big_touched: String,
    /// Run only these cases (`one`, `many`, `big`; repeatable); default all.
    #[arg(long = "case", value_name = "CASE")]
    cases: Vec<String>,
    /// Internal: hold a backend of this `-object` text (a holder process).
    #[arg(long, hide = true)]
    hold: Option<String>,
    /// Internal: bytes the holder touches.
    #[arg(long, hide = true)]
    touch: Option<u64>,
    /// Internal: the holder turns THP off for itself.
    #[arg(long, hide = true)]
    thp_off: bool,
}

/// Runs `hostmem-bench scrape ...` when that is the command line; None otherwise.
pub fn dispatch() -> Option<ExitCode> {
    if std::env::args().nth(1).as_deref() != Some("scrape") {
        return None;
    }
    let args = ScrapeArgs::parse_from(std::env::args().skip(1));
    let result = match &args.hold {
        Some(spec) => hold::hold(spec, args.touch, args.thp_off).map(|()| String::new()),
        None => cases::run(&args),
    };
    Some(match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostmem-bench scrape: {e}");
            ExitCode::from(1)
        }
    })
}
