//! `hostmem run --hold` as a process that keeps its backends while a test reads the
//! kernel's view of them from /proc/PID.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use super::kernel::{read_range, Kernel};

/// `hostmem run --json --hold ARGS` while it holds its backends: the process and the
/// report it printed.
pub struct Held {
    child: Child,
    /// The report it printed (`hostmem run --json`).
    pub report: serde_json::Value,
}

impl Held {
    /// Starts it and waits for its report: then the backends are made.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Held {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hostmem"))
            .args(["run", "--json", "--hold"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let report = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Held { child, report }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut err = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        pipe.read_to_string(&mut err).unwrap();
        assert!(self.child.wait().unwrap().success(), "{err}");
        err
    }
}
