//! The `hostmem` command as a library: the subcommands (`run`, `host`, `bench`), the
//! report, and the QMP monitor. The binary (`src/main.rs`) only parses the command
//! line; the fuzz targets (`fuzz/`) drive the QMP monitor in process through
//! [`qmp::Monitor`], the same request path the socket server takes.

pub mod bench;
pub mod host;
pub mod qmp;
pub mod report;
pub mod run;
pub mod signals;
