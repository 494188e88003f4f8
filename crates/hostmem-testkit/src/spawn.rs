//! The hostmem binary run by a test: to its end, bounded in time, or held
//! (`hostmem run --json --hold`) while the test reads the kernel's view of the process
//! from /proc/PID.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait_until;

/// `BINARY ARGS` with stdin from /dev/null, to be configured further.
pub fn command<S: AsRef<OsStr>>(binary: &str, args: &[S]) -> Command {
    let mut c = Command::new(binary);
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `cmd` to its end; its stdout when it succeeded, else its status and stderr.
pub fn output_ok(cmd: &mut Command) -> Result<String, String> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{name}: stdout: {e}"))
}

/// Waits for `child` at most `limit`; kills it and fails when it hangs.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let pid = child.id();
    let r = wait_until(
        limit,
        || format!("process {pid} did not exit"),
        || child.try_wait().map_err(|e| e.to_string()),
    );
    if r.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    r
}

/// All the child wrote to its piped stderr (empty when it was not piped).
pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut s);
    }
    s
}

/// `hostmem run --json --hold ARGS` while it holds its backends: the process and the
/// report line it printed once they were made. Killed on drop if still running.
pub struct Held {
    child: Child,
    /// The report line (`hostmem run --json`), as printed.
    pub line: String,
}

impl Held {
    /// Starts `binary run --json --hold ARGS` and waits for its report line.
    pub fn start<S: AsRef<OsStr>>(binary: &str, args: &[S]) -> Result<Held, String> {
        let mut child = Command::new(binary)
            .args(["run", "--json", "--hold"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(out) => BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| e.to_string()),
            None => Err("no stdout".into()),
        };
        let mut held = Held { child, line };
        read?;
        if held.line.is_empty() {
            let err = stderr_of(&mut held.child);
            return Err(format!("{binary} run printed no report: {err}"));
        }
        Ok(held)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// EOF on stdin ends the hold: the backends are deleted and hostmem exits. Its
    /// exit status and what it printed on stderr.
    pub fn finish(mut self) -> Result<(ExitStatus, String), String> {
        drop(self.child.stdin.take());
        let err = stderr_of(&mut self.child);
        let st = self.child.wait().map_err(|e| e.to_string())?;
        Ok((st, err))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
