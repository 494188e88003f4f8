//! `hostmem run --hold` as a process that keeps its backends while a test reads the
//! kernel's view of them from /proc/PID (hostmem-testkit's `Held`, its report parsed).

use std::ffi::OsStr;

use super::kernel::{read_range, Kernel};

/// `hostmem run --json --hold ARGS` while it holds its backends: the process and the
/// report it printed.
pub struct Held {
    kit: hostmem_testkit::spawn::Held,
    /// The report it printed (`hostmem run --json`).
    pub report: serde_json::Value,
}

impl Held {
    /// Starts it and waits for its report: then the backends are made.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Held {
        let kit = hostmem_testkit::spawn::Held::start(env!("CARGO_BIN_EXE_hostmem"), args)
            .unwrap_or_else(|e| panic!("{e}"));
        let line = &kit.line;
        let report = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Held { kit, report }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.kit.pid()
    }

    /// The kernel's view, read by the test from /proc/PID/smaps and numa_maps, of the
    /// `len` bytes of backend `id`; the report serves only to find where it is mapped.
    pub fn kernel(&self, id: &str, len: u64) -> Kernel {
        let b = self.report["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("no backend {id} in {}", self.report));
        read_range(self.pid(), b["host-addr"].as_u64().unwrap(), len)
    }

    /// EOF on stdin ends the hold: the backends are deleted and the exit is clean.
    /// What it printed on stderr.
    pub fn finish(self) -> String {
        let (status, err) = self.kit.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "{err}");
        err
    }
}
