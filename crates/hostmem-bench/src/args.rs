//! The bench's command line: its own module, so the plan and the runner read the
//! arguments without reaching up to the binary's root.

use std::path::PathBuf;

use clap::Parser;

const EXAMPLES: &str = "Examples:
  hostmem-bench                         4 GiB backends, 1 warm-up + 5 repetitions (~9 min on 2 vCPUs)
  hostmem-bench --size 2G               a shorter profile (~5 min)
  hostmem-bench --size 256M --reps 1    a quick smoke run
  hostmem-bench --save-json run.json    tables on stdout, medians, samples and targets in run.json
  hostmem-bench --json                  medians, ratios and targets as one JSON document
  hostmem-bench snapshot --size 8G      save and restore against the kernel's own I/O (issue 21)
  hostmem-bench plug --size 2G          plug and unplug against prealloc and the kernel's discard (issue 22)";

/// Preallocation speed against QEMU and memset, medians and ratios from one run.
#[derive(Parser)]
#[command(name = "hostmem-bench", version, after_help = EXAMPLES)]
pub(crate) struct BenchArgs {
    /// Repetitions measured (interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub(crate) reps: usize,
    /// Unmeasured repetitions first, so memory the host has not backed yet is touched.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    /// Backend size (the four-backend case uses a quarter each, the libvirt-style case
    /// shares it among its backends).
    #[arg(long, default_value = "4G")]
    pub(crate) size: String,
    /// Backends in the libvirt-style line, each with its own thread-context.
    #[arg(long, default_value_t = 2)]
    pub(crate) libvirt_backends: usize,
    /// Times the libvirt-style case runs in each repetition (its samples are pooled).
    #[arg(long, default_value_t = 3)]
    pub(crate) libvirt_rounds: usize,
    /// QEMU binary to compare with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub(crate) qemu: String,
    /// The hostmem binary to time (default: the `hostmem` next to this program, as
    /// `cargo build` puts them).
    #[arg(long)]
    pub(crate) hostmem: Option<PathBuf>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the JSON document (medians, every sample, targets) to this file, so a
    /// run printed as tables keeps its samples.
    #[arg(long, value_name = "FILE")]
    pub(crate) save_json: Option<PathBuf>,
    /// Another measurement instead of preallocation (its own options follow it).
    #[command(subcommand)]
    pub(crate) mode: Option<crate::modes::Mode>,
}
