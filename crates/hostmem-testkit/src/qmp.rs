//! A QMP client of the tests' own, beside hostmem's: what QEMU (or hostmem's monitor)
//! says is read here with code of the tests, not hostmem's. One JSON message per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use serde_json::{json, Value};

use crate::wait_until;

/// A negotiated QMP connection over a Unix socket.
pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    /// The server's greeting (`{"QMP": ...}`).
    pub greeting: Value,
}

impl Qmp {
    /// Connects to the monitor at `path` and leaves capabilities negotiation done.
    /// A socket that does not exist or does not listen yet (the server is starting) is
    /// tried again until `timeout`; `timeout` also bounds each read.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let s = wait_until(
            timeout,
            || format!("no QMP server listening on {}", path.display()),
            || match UnixStream::connect(path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if is_starting(&e) => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
        )?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            w: s,
            greeting: Value::Null,
        };
        q.greeting = q.message()?;
        if q.greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {}", q.greeting));
        }
        q.ok("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Sends command `name` without waiting for its reply (see [`Qmp::reply`]).
    pub fn send(&mut self, name: &str, args: Value) -> Result<(), String> {
        let m = json!({"execute": name, "arguments": args});
        writeln!(self.w, "{m}").map_err(|e| format!("QMP {name}: {e}"))
    }

    /// The next reply (`return` or `error`), events in between skipped.
    pub fn reply(&mut self) -> Result<Value, String> {
        loop {
            let v = self.message()?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// The reply to command `name`, whether a `return` or an `error`.
    pub fn cmd(&mut self, name: &str, args: Value) -> Result<Value, String> {
        self.send(name, args)?;
        self.reply()
    }

    /// The `return` of command `name`; its `error` as an `Err`.
    pub fn ok(&mut self, name: &str, args: Value) -> Result<Value, String> {
        let mut r = self.cmd(name, args)?;
        match r.get_mut("return") {
            Some(v) => Ok(v.take()),
            None => Err(format!("QMP {name}: {r}")),
        }
    }

    fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .r
            .read_line(&mut line)
            .map_err(|e| format!("QMP: {e}"))?;
        if n == 0 {
            return Err("QMP: connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line:?}"))
    }
}

/// Whether a connect error means the server is not listening yet.
fn is_starting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    matches!(e.kind(), NotFound | ConnectionRefused)
}

/// One row of `info ramblock`, read by the test.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    /// The block's name (a backend's id), empty for a block with none.
    pub name: String,
    /// Bytes in use.
    pub used: u64,
    /// Host virtual address in QEMU's process.
    pub hva: u64,
}

/// `info ramblock` through `q`, parsed by the test.
pub fn ramblocks(q: &mut Qmp) -> Result<Vec<Block>, String> {
    let r = q.ok(
        "human-monitor-command",
        json!({"command-line": "info ramblock"}),
    )?;
    let text = r.as_str().ok_or_else(|| format!("info ramblock: {r}"))?;
    parse_ramblocks(text)
}

/// The rows of `info ramblock`'s text (a header line first).
pub fn parse_ramblocks(text: &str) -> Result<Vec<Block>, String> {
    let hex = |s: &str| {
        u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .map_err(|e| format!("info ramblock: {s:?}: {e}"))
    };
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            // name psize unit offset used total hva ro; an empty name drops a column.
            let (name, rest) = match t.len() {
                8 => (t[0].to_string(), &t[1..]),
                7 => (String::new(), &t[..]),
                _ => return Err(format!("info ramblock row {l:?}")),
            };
            Ok(Block {
                name,
                used: hex(rest[3])?,
                hva: hex(rest[5])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramblock_rows_with_and_without_a_name() {
        let text = "              Block Name    PSize              Offset               Used              Total                HVA  RO\n\
                    ram    4 KiB  0x0000000000000000 0x0000000004000000 0x0000000004000000 0x00007f0000000000  rw\n\
                    4 KiB  0x0000000004000000 0x0000000000020000 0x0000000000020000 0x00007f1000000000  ro\n";
        let b = parse_ramblocks(text).unwrap();
        assert_eq!(b[0].name, "ram");
        assert_eq!((b[0].used, b[0].hva), (64 << 20, 0x7f00_0000_0000));
        assert_eq!((b[1].name.as_str(), b[1].used), ("", 0x20000));
        assert!(parse_ramblocks("head\nshort row\n").is_err());
    }
}
