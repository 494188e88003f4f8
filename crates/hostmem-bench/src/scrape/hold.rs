//! The processes a scrape reads: this program started again as `hostmem-bench scrape
//! --hold SPEC`, which makes one backend from an `-object` text with the library,
//! touches it, says where it is (`HOLDING pid addr len`) and keeps it until its stdin
//! closes. A VM's memory as the exporter meets it, without a guest: QEMU with
//! `-machine none` can preallocate a backend but not touch part of one.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use hostmem::Progress;
use rustix::thread::disable_transparent_huge_pages;

use crate::inproc::make_backend;

/// Bytes touched at a time in a partly touched backend.
pub const BLOCK: u64 = 2 << 20;

/// In the child: makes the backend, touches `touch` bytes of it (whole 2 MiB blocks
/// spread over it) unless it preallocated, prints where it is, and waits for EOF.
pub fn hold(spec: &str, touch: Option<u64>, thp_off: bool) -> Result<(), String> {
    if thp_off {
        disable_transparent_huge_pages(true).map_err(|e| format!("PR_SET_THP_DISABLE: {e}"))?;
    }
    let b = make_backend(spec, &Progress::new())?;
    let mem = b.hold().map_err(|e| e.to_string())?;
    if let Some(bytes) = touch {
        for block in spread_blocks(mem.len() as u64 / BLOCK, bytes / BLOCK) {
            mem.fill((block * BLOCK) as usize, BLOCK as usize, 1)
                .map_err(|e| format!("touching block {block}: {e}"))?;
        }
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "HOLDING {} {} {}",
        std::process::id(),
        mem.host_addr(),
        mem.len()
    )
    .and_then(|_| out.flush())
    .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

/// `want` of `blocks` block indices, spread evenly-ish but not on a stride: block i
/// is taken when (i·K mod blocks) < want, K odd and large, a permutation when
/// `blocks` is a power of two (64 GiB of 2 MiB blocks is).
pub fn spread_blocks(blocks: u64, want: u64) -> impl Iterator<Item = u64> {
    const K: u64 = 0x9e37_79b9_7f4a_7c15 | 1;
    (0..blocks).filter(move |&i| {
        (u128::from(i) * u128::from(K) % u128::from(blocks.max(1))) < u128::from(want)
    })
}

/// A holding child in the parent: its range; closing stdin ends it.
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
    pub start: u64,
    pub len: u64,
}

/// Starts a holder of `spec` (this program again).
pub fn start(spec: &str, touch: Option<u64>, thp_off: bool) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["scrape", "--hold", spec]);
    if let Some(t) = touch {
        cmd.args(["--touch", &t.to_string()]);
    }
    if thp_off {
        cmd.arg("--thp-off");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting a holder: {e}"))
}

/// Waits for a started holder's `HOLDING` line (it ends its output on failure, which
/// is then the error).
pub fn held(mut child: Child) -> Result<Held, String> {
    let out = child.stdout.take().ok_or("holder without stdout")?;
    let mut line = String::new();
    let n = BufReader::new(out).read_line(&mut line).unwrap_or(0);
    let v: Vec<u64> = line
        .trim()
        .strip_prefix("HOLDING ")
        .map(|r| r.split(' ').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_default();
    let stdin = child.stdin.take();
    let mut h = Held {
        child,
        stdin,
        pid: 0,
        start: 0,
        len: 0,
    };
    if n == 0 || v.len() != 3 {
        return Err(format!(
            "a holder failed (printed {line:?}); see its stderr above"
        ));
    }
    (h.pid, h.start, h.len) = (v[0] as u32, v[1], v[2]);
    Ok(h)
}

impl Drop for Held {
    /// Closes stdin so the holder exits by itself and frees its memory; kills it
    /// (our own child, by its handle) if it has not after 30 s.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_blocks_takes_exactly_the_wanted_count_when_blocks_are_a_power_of_two() {
        let b: Vec<u64> = spread_blocks(32768, 6144).collect();
        assert_eq!(b.len(), 6144);
        // Not one run: the blocks are spread over the whole range.
        assert!(b[0] < 1024 && *b.last().unwrap() > 31744, "{:?}", &b[..4]);
        assert_eq!(spread_blocks(8, 0).count(), 0);
        assert_eq!(spread_blocks(8, 8).count(), 8);
    }
}
