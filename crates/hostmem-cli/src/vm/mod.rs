//! `hostmem vm`: a running QEMU's memory backends, read from the kernel, and moved
//! between nodes while the VM runs (docs/vm.md).
//!
//! The QMP socket is the authority: whoever can connect to it may ask QEMU anything,
//! and hostmem asks `query-memdev`, `qom-list /objects`, `info ramblock` and
//! `query-memory-devices`, and changes nothing but a virtio-mem device's
//! `requested-size`, when told to resize it. The
//! memory itself is read from /proc/PID and moved with move_pages(2), under the
//! kernel's own permission checks on QEMU's process (the pid comes from the socket's
//! peer credentials, not from anything QEMU says).
//!
//! One file per concern: `client` (QMP), `ramblock` (`info ramblock`), `virtio_mem`
//! (`query-memory-devices`), `snapshot` (the backends at one moment), `render` (text
//! and JSON), `watch`, `rebind`, `resize` (a virtio-mem device's requested size,
//! followed on both sides) and `resize_report`, `error`.

pub mod client;
pub mod error;
pub mod ramblock;
pub mod rebind;
pub mod render;
pub mod resize;
pub mod resize_report;
pub mod snapshot;
pub mod virtio_mem;
pub mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use hostmem::remote::RebindOptions;
use hostmem::{Process, Progress};

use crate::signals;
use client::QmpClient;
use error::VmError;

pub const EXAMPLES: &str = "Examples:
  hostmem vm --qmp /run/vm1.qmp
      each memory backend: requested policy, and where its pages are (per node), THP/huge pages, VmFlags
  hostmem vm --qmp /run/vm1.qmp --watch 2
      the same every 2 seconds, redrawn in place on a terminal
  hostmem vm --qmp /run/vm1.qmp --json
  hostmem vm --qmp /run/vm1.qmp rebind ram-node1 2
      move backend ram-node1's resident pages to host node 2
  hostmem vm --qmp /run/vm1.qmp rebind ram-node1 1,2
      interleave them over host nodes 1 and 2
  hostmem vm --qmp /run/vm1.qmp resize vm0 4G
      ask virtio-mem device vm0 for 4 GiB; follow the guest's plugged size and the host's
      resident memory of its memdev until both are there";

#[derive(Args)]
pub struct VmArgs {
    /// QEMU's QMP socket: a Unix socket path (`unix:PATH[,...]` as in -qmp is accepted).
    #[arg(long = "qmp", value_name = "SOCKET")]
    pub qmp: String,
    /// Print JSON (schema: docs/vm.schema.json, described in docs/vm.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Report again every SECONDS until Ctrl-C or until QEMU exits.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<f64>,
    /// Seconds to wait for any QMP reply before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub action: Option<VmAction>,
}

#[derive(Subcommand)]
pub enum VmAction {
    /// Move a backend's resident pages to NODES (interleaved when several) with
    /// move_pages(2) on QEMU's process; refused before anything moves when a node has
    /// no memory or too little memory available for its share.
    Rebind {
        /// The memory backend's id (as in query-memdev).
        id: String,
        /// Host nodes, e.g. `2`, `1,2`, `0-3`.
        nodes: String,
        /// Also move pages other processes map too (MPOL_MF_MOVE_ALL; needs CAP_SYS_NICE).
        #[arg(long)]
        move_all: bool,
    },
    /// Set a virtio-mem device's requested-size and follow both sides until they get
    /// there: the guest's plugged size (QMP) and the resident memory of the device's
    /// memdev in QEMU's process (/proc/PID/smaps). Refused before any change when SIZE
    /// is off the device's block grid or above its maximum.
    Resize {
        /// The virtio-mem device's id (`-device virtio-mem-pci,id=...`).
        device: String,
        /// The new requested size: bytes, or with a K, M, G, T suffix (`1G`, `512M`).
        size: String,
        /// Give up when neither the guest's plugged size nor the host's resident memory
        /// moved for SECONDS (the request stays).
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        stall: f64,
    },
}

/// `unix:/path,server=on` → `/path`; a plain path stays (also `hostmem exporter`'s `--qmp`).
pub fn socket_path(spec: &str) -> PathBuf {
    let p = spec.strip_prefix("unix:").unwrap_or(spec);
    let p = if spec.starts_with("unix:") {
        p.split(',').next().unwrap_or(p)
    } else {
        p
    };
    PathBuf::from(p)
}

fn fail(e: &VmError) -> ExitCode {
    eprintln!("hostmem: {e}");
    ExitCode::from(1)
}

pub fn main(a: VmArgs) -> ExitCode {
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut c = match QmpClient::connect(&socket_path(&a.qmp), timeout) {
        Ok(c) => c,
        Err(e) => return fail(&e.into()),
    };
    let process = match Process::new(c.pid) {
        Ok(p) => p,
        Err(e) => return fail(&e.into()),
    };
    let progress = Arc::new(Progress::new());
    let events = match signals::install(progress.clone()) {
        Ok(ev) => ev,
        Err(e) => {
            eprintln!("hostmem: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    match a.action {
        Some(VmAction::Rebind {
            id,
            nodes,
            move_all,
        }) => {
            let options = RebindOptions { move_all };
            match rebind::run(&mut c, &process, &id, &nodes, options, progress) {
                Ok(o) => {
                    print(
                        a.json,
                        || rebind::json(process.pid(), &o),
                        || rebind::text(&o),
                    );
                    if o.report.cancelled {
                        eprintln!("hostmem: rebind of {id} cancelled part-way");
                        ExitCode::from(130)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Some(VmAction::Resize {
            device,
            size,
            stall,
        }) => {
            if !(stall.is_finite() && stall > 0.0) {
                eprintln!("hostmem: --stall {stall}: must be a positive number of seconds");
                return ExitCode::from(2);
            }
            let stall = Duration::from_secs_f64(stall);
            match resize::run(&mut c, &process, &device, &size, stall, &events) {
                Ok(o) => {
                    print(
                        a.json,
                        || resize_report::json(process.pid(), &o),
                        || resize_report::text(&o),
                    );
                    match (o.end, resize_report::failure(&o)) {
                        (_, None) => ExitCode::SUCCESS,
                        (resize::End::Cancelled, Some(why)) => {
                            eprintln!("hostmem: {why}");
                            ExitCode::from(130)
                        }
                        (_, Some(why)) => {
                            eprintln!("hostmem: {why}");
                            ExitCode::from(1)
                        }
                    }
                }
                Err(e) => fail(&e),
            }
        }
        None => match a.watch {
            Some(secs) if !(secs.is_finite() && secs > 0.0) => {
                eprintln!("hostmem: --watch {secs}: must be a positive number of seconds");
                ExitCode::from(2)
            }
            Some(secs) => {
                match watch::run(
                    &mut c,
                    &process,
                    Duration::from_secs_f64(secs),
                    a.json,
                    &events,
                ) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e),
                }
            }
            None => match once(&mut c, &process, a.json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            },
        },
    }
}

/// An action's outcome on stdout: one JSON document on a line, or its text. A closed
/// stdout is no error: the action was done either way.
fn print(as_json: bool, doc: impl FnOnce() -> serde_json::Value, text: impl FnOnce() -> String) {
    let out = if as_json {
        format!("{}\n", doc())
    } else {
        text()
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// One report.
fn once(c: &mut QmpClient, process: &Process, as_json: bool) -> Result<(), VmError> {
    let snap = snapshot::take(c).map_err(|e| e.or_exited(process.pid()))?;
    let looked = render::look(process, &snap);
    let out = if as_json {
        format!(
            "{}\n",
            render::json(process.pid(), &c.version, &snap, &looked)
        )
    } else {
        render::text(process.pid(), &c.version.to_string(), &snap, &looked)
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}
