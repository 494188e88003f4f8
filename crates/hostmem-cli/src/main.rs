//! `hostmem`: host memory backends from QEMU `-object` specs, reports read from the
//! kernel, and a QMP monitor. The command line is `hostmem_cli::cli`.
//!
//! No unsafe code: the library fences every unsafe syscall; what it does not offer
//! comes from rustix.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use hostmem_cli::cli::{self, Cli};

fn main() -> ExitCode {
    cli::main(Cli::parse_from(cli::qemu_style(std::env::args())))
}
