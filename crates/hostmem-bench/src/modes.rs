//! The bench's other modes, each measuring one issue's figures against the kernel's own
//! way of doing the same work, side by side in one run: `snapshot` (save and restore,
//! issue 21) and `plug` (plug and unplug blocks, issue 22). The preallocation bench
//! (no mode) is unchanged; these live apart so its command line stays as it was.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::modereport::ModeRun;

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// Snapshot save, copy and private restore, diff images (issue 21), each against
    /// the kernel doing the same I/O: a plain sequential write, a parallel read into
    /// a fresh mapping, a single-threaded copy of the whole image.
    Snapshot(SnapArgs),
    /// Plug and unplug of blocks (issue 22) against the preallocation of a plain
    /// backend and the kernel's own discard (madvise, hole punch), and Committed_AS.
    Plug(PlugArgs),
    /// One private clone of an image (run by `snapshot` as a child process).
    #[command(hide = true)]
    Clone(crate::clones::CloneArgs),
}

/// What every mode takes: repetitions, output.
#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Repetitions measured, in an order that rotates; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Unmeasured repetitions first (memory this host has not backed yet is slow).
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    /// Only these parts (comma-separated): snapshot 4k, 2m, clones; plug 4k, thp, shmem, 2m.
    #[arg(long, value_delimiter = ',')]
    pub(crate) kinds: Vec<String>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the JSON document (medians, samples, targets) to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) save_json: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub(crate) struct SnapArgs {
    /// Backend size; half its pages are written, in scattered 2 MiB runs.
    #[arg(long, default_value = "8G")]
    pub(crate) size: String,
    /// Directory for the images and the plain-write file (one file system for both).
    #[arg(long, default_value = "/var/tmp/hostmem-bench")]
    pub(crate) dir: PathBuf,
    /// Concurrent private clones of one image.
    #[arg(long, default_value_t = 25)]
    pub(crate) clones: usize,
    /// Size of the image the clones map (written whole).
    #[arg(long, default_value = "1G")]
    pub(crate) clone_size: String,
    /// Percent of its 4 KiB pages each clone writes.
    #[arg(long, default_value_t = 5)]
    pub(crate) clone_write_pct: u64,
    /// Random 4 KiB pages written between a base and its diff.
    #[arg(long, default_value_t = 1000)]
    pub(crate) diff_pages: u64,
    /// Size of the backend the diff is measured on.
    #[arg(long, default_value = "1G")]
    pub(crate) diff_size: String,
    /// Only the save figures (save and the plain write, image size); no restores,
    /// diffs or clones: for profiling the save.
    #[arg(long)]
    pub(crate) save_only: bool,
    /// Only the diff case of each kind (no save, copy, lazy or private restore).
    #[arg(long)]
    pub(crate) only_diff: bool,
    /// Only the lazy restore's figures and the copy restore its fill is set beside
    /// (the image saved once, untimed; no baselines, private restore or diff).
    #[arg(long)]
    pub(crate) lazy_only: bool,
    /// The lazy restore's fill priority: idle (SCHED_IDLE, the library's default), low
    /// (nice 19) or normal.
    #[arg(long, value_parser = ["idle", "low", "normal"])]
    pub(crate) lazy_fill: Option<String>,
    /// The lazy restore's fill threads (default: the library's, 1).
    #[arg(long)]
    pub(crate) lazy_fill_threads: Option<usize>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args, Clone)]
pub(crate) struct PlugArgs {
    /// Bytes plugged and unplugged (and of the plain backend compared).
    #[arg(long, default_value = "2G")]
    pub(crate) size: String,
    /// Block size.
    #[arg(long, default_value = "2M")]
    pub(crate) block: String,
    /// Maximum of the backend whose Committed_AS growth is checked.
    #[arg(long, default_value = "64G")]
    pub(crate) max: String,
    /// What is plugged in that backend.
    #[arg(long, default_value = "1G")]
    pub(crate) committed_plug: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

impl Common {
    /// Whether kind `key` was asked for (all when none were named).
    pub(crate) fn wants(&self, key: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == key)
    }
}

/// Runs a mode; the text (or JSON) to print.
pub(crate) fn run(mode: &Mode) -> Result<String, String> {
    let (run, common): (ModeRun, &Common) = match mode {
        Mode::Snapshot(a) => (crate::snap::run(a)?, &a.common),
        Mode::Plug(a) => (crate::plugmode::run(a)?, &a.common),
        Mode::Clone(a) => return crate::clones::child(a).map(|()| String::new()),
    };
    let json = format!("{}\n", run.json());
    if let Some(path) = &common.save_json {
        std::fs::write(path, &json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if common.json { json } else { run.text() })
}
