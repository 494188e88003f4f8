//! `hostmem vm --watch N`: the report again every N seconds. On a terminal the previous
//! report is redrawn in place (cursor up, clear to the end); otherwise each report is
//! appended after a `--- +N.Ns` line (JSON: one document per line), so a log keeps every
//! one. Ends cleanly on SIGINT/SIGTERM and with a clear error when QEMU goes away; a
//! backend deleted meanwhile is reported gone once and the watch goes on.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use hostmem::Process;
use serde_json::json;

use super::client::QmpClient;
use super::error::VmError;
use super::{render, snapshot};
use crate::signals::Events;

/// Watches until a signal (Ok) or until QEMU cannot be asked any more (Err).
pub fn run(
    c: &mut QmpClient,
    process: &Process,
    every: Duration,
    as_json: bool,
    events: &Events,
) -> Result<(), VmError> {
    let started = Instant::now();
    let redraw = !as_json && std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    loop {
        let snap = snapshot::take(c).map_err(|e| e.or_exited(process.pid()))?;
        let now: BTreeSet<String> = snap.backends.iter().map(|b| b.id.clone()).collect();
        let gone: Vec<&String> = seen.difference(&now).collect();
        let looked = render::look(process, &snap);
        let elapsed = started.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let written = if as_json {
            let mut doc = render::json(process.pid(), &c.version, &snap, &looked);
            doc["elapsed-seconds"] = json!(elapsed);
            doc["gone"] = json!(gone);
            writeln!(out, "{doc}")
        } else {
            let mut text = String::new();
            for g in &gone {
                text.push_str(&format!("{g}: gone (deleted since the last look)\n"));
            }
            text.push_str(&render::text(
                process.pid(),
                &c.version.to_string(),
                &snap,
                &looked,
            ));
            if redraw {
                if drawn_lines > 0 {
                    // Back to the first line of the last report, clear everything below.
                    write!(out, "\x1b[{drawn_lines}A\x1b[J").and_then(|_| write!(out, "{text}"))
                } else {
                    write!(out, "{text}")
                }
            } else {
                write!(out, "--- +{elapsed:.1}s\n{text}")
            }
            .map(|_| drawn_lines = text.lines().count())
        };
        if written.and_then(|_| out.flush()).is_err() {
            // stdout closed (a pipe's reader left): nobody is watching.
            return Ok(());
        }
        drop(out);
        seen = now;
        match events.rx.recv_timeout(every) {
            Ok(_) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}
