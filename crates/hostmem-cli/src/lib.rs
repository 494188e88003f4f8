//! The `hostmem` command as a library: its command line ([`cli`]), the subcommands
//! (`run`, `host`, `vm`), the report, and the QMP monitor. The binary (`src/main.rs`) only
//! parses the command line; the fuzz targets (`fuzz/`) drive the QMP monitor in process through
//! [`qmp::Monitor`], the same request path the socket server takes; the QEMU
//! comparison (`crates/hostmem-bench`) uses the report and the signal handling.
//!
//! No unsafe code: the library fences every unsafe syscall; what it does not offer
//! comes from rustix.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cmdline;
pub mod host;
pub mod image;
pub mod lazy;
pub mod qmp;
pub mod report;
pub mod run;
pub mod signals;
pub mod vm;
