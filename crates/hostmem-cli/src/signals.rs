//! SIGINT/SIGTERM and stdin EOF turned into events the main thread waits for, so a
//! signal never kills the process with memory or files half set up.

use std::io::Read;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use hostmem::Progress;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Why the program should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(i32),
    StdinClosed,
    /// `quit` on the QMP monitor.
    Quit,
}

impl Stop {
    /// Exit status after a clean stop: 128 + signal for an interrupted run.
    pub fn status(self) -> u8 {
        match self {
            Stop::Signal(s) => 128 + s as u8,
            _ => 0,
        }
    }
}

pub struct Events {
    pub tx: Sender<Stop>,
    pub rx: Receiver<Stop>,
}

/// Installs the signal handlers. A signal also cancels a running preallocation.
pub fn install(progress: Arc<Progress>) -> std::io::Result<Events> {
    let (tx, rx) = channel();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let t = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                progress.cancel();
                if t.send(Stop::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(Events { tx, rx })
}

/// Reports EOF on stdin (for `--hold`).
pub fn watch_stdin(tx: Sender<Stop>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(Stop::StdinClosed);
        });
}
