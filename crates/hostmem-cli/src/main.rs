//! `hostmem`: host memory backends from QEMU `-object` specs, reports read from the
//! kernel, and a QMP monitor.
//!
//! No unsafe code: the library fences every unsafe syscall; what it does not offer
//! comes from rustix.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostmem_cli::{host, run, vm};

#[derive(Parser)]
#[command(
    name = "hostmem",
    version,
    about = "Host memory backends for virtual machines: QEMU's memory-backend-* objects, placed, preallocated and read back from the kernel",
    after_help = "QEMU-style single-dash options (-object, -machine, -mem-prealloc, -qmp) are accepted as well."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create backends, preallocate them together and report what the kernel says.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
    /// Show the host as hostmem sees it: NUMA nodes, huge page pools, THP, KSM, features.
    #[command(after_help = host::EXAMPLES)]
    Host(host::HostArgs),
    /// A running QEMU's memory backends, node by node, read from the kernel; `rebind` moves one.
    #[command(after_help = vm::EXAMPLES)]
    Vm(vm::VmArgs),
}

/// QEMU spells its options with one dash; clap wants two. A QEMU command line after
/// `--` is left as it is.
fn qemu_style(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut after_dashes = false;
    args.map(|a| {
        if after_dashes {
            return a;
        }
        match a.as_str() {
            "--" => {
                after_dashes = true;
                a
            }
            "-object" | "-machine" | "-mem-prealloc" | "-qmp" => format!("-{a}"),
            _ => a,
        }
    })
    .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(qemu_style(std::env::args()));
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::Host(a) => host::main(a),
        Command::Vm(a) => vm::main(a),
    }
}
