//! A QMP connection of a test's own to a QEMU under test, beside hostmem's: what QEMU
//! says (`info ramblock`) is read here with a parser of the test's, not hostmem's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// A QMP connection of the test's own: one JSON reply per line.
pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    /// Connects to the monitor at `path` and leaves capabilities negotiation done.
    pub fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("\"QMP\""), "{greeting}");
        q.cmd("qmp_capabilities", json!({}));
        q
    }

    /// The reply to command `name` (events in between skipped).
    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let m = json!({"execute": name, "arguments": args});
        writeln!(self.w, "{m}").unwrap();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

/// One row of `info ramblock`, read by this test.
#[derive(Debug)]
pub struct Block {
    /// The block's name (a backend's id), empty for a block with none.
    pub name: String,
    /// Bytes in use.
    pub used: u64,
    /// Host virtual address in QEMU's process.
    pub hva: u64,
}

/// `info ramblock` through `q`, parsed by this test.
pub fn ramblocks(q: &mut Qmp) -> Vec<Block> {
    let r = q.cmd(
        "human-monitor-command",
        json!({"command-line": "info ramblock"}),
    );
    let text = r["return"].as_str().unwrap().to_string();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            // name psize unit offset used total hva ro; an empty name drops a column.
            let (name, rest) = if t.len() == 8 {
                (t[0].to_string(), &t[1..])
            } else {
                (String::new(), &t[..])
            };
            Block {
                name,
                used: hex(rest[3]),
                hva: hex(rest[5]),
            }
        })
        .collect()
}
