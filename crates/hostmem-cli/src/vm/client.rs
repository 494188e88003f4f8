//! A QMP client for one running QEMU: connect to its Unix socket, read the greeting,
//! leave capabilities negotiation, execute commands, skip the events in between.
//!
//! Why not a crate: `qapi` (arcnmx/qapi-rs) generates its types from one QEMU
//! release's schema at build time and wants its own stream types; the async `qmp`
//! crate brings tokio. `hostmem vm` needs four commands, a read timeout so a socket
//! that is not QEMU's cannot hang it, and the socket's peer credentials (QEMU's pid):
//! a std `UnixStream`, serde_json, and the framer the QMP server already uses
//! (`qmp::framer`) do that in a page.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::framer::Framer;

/// Largest reply we accept (an `info ramblock` of a big VM is a few KiB).
const MAX_REPLY: usize = 16 << 20;
/// Events kept for `wait_event` at most; older ones are dropped (a `--watch` that never
/// asks for events must not grow without end).
const MAX_EVENTS: usize = 256;

/// Why talking to QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The kernel's reason.
        source: std::io::Error,
    },
    /// Whatever answers on the socket does not speak QMP.
    #[error("{path} is not a QMP socket: {why}")]
    NotQmp {
        /// The socket path.
        path: PathBuf,
        /// What it did instead.
        why: String,
    },
    /// QEMU closed the connection (it exited, or another client made it quit).
    #[error("QEMU closed the QMP connection {path} during {during} (it exited?)")]
    Gone {
        /// The socket path.
        path: PathBuf,
        /// What we were waiting for.
        during: String,
    },
    /// No reply in time.
    #[error("no reply from {path} to {during} within {secs} s")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// What we were waiting for.
        during: String,
        /// The timeout.
        secs: u64,
    },
    /// Any other socket error.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The kernel's reason.
        source: std::io::Error,
    },
    /// QEMU answered with an error.
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QEMU's message.
        desc: String,
    },
    /// A reply we cannot read.
    #[error("unexpected reply to {command} from QEMU: {why}")]
    Protocol {
        /// The command.
        command: String,
        /// What is wrong with it.
        why: String,
    },
    /// The socket's peer credentials (QEMU's pid) could not be read.
    #[error("cannot read the peer credentials of {path} (SO_PEERCRED): {source}")]
    PeerCred {
        /// The socket path.
        path: PathBuf,
        /// The kernel's reason.
        source: std::io::Error,
    },
}

/// QEMU's version from the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    /// (major, minor, micro).
    pub numbers: (u64, u64, u64),
    /// The distribution's package string (`Debian 1:10.0.2+ds-...`).
    pub package: String,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b, c) = self.numbers;
        write!(f, "{a}.{b}.{c}")
    }
}

/// One QMP connection in command mode.
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    stream: UnixStream,
    framer: Framer,
    pending: VecDeque<Vec<u8>>,
    /// Events that came while a reply was awaited, oldest first.
    events: VecDeque<Value>,
    timeout: Duration,
    /// QEMU's pid, from the socket's peer credentials.
    pub pid: u32,
    /// QEMU's version, from the greeting.
    pub version: QemuVersion,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capabilities negotiation. Every wait is
    /// bounded by `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.into(),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.into(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let cred =
            rustix::net::sockopt::socket_peercred(&stream).map_err(|e| QmpError::PeerCred {
                path: path.into(),
                source: e.into(),
            })?;
        let mut c = QmpClient {
            path: path.into(),
            stream,
            framer: Framer::new(MAX_REPLY),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            timeout,
            pid: cred.pid.as_raw_nonzero().get() as u32,
            version: QemuVersion {
                numbers: (0, 0, 0),
                package: String::new(),
            },
        };
        let not_qmp = |why: String| QmpError::NotQmp {
            path: path.into(),
            why,
        };
        let greeting = match c.next_message("the QMP greeting") {
            Ok(v) => v,
            Err(QmpError::Timeout { secs, .. }) => {
                return Err(not_qmp(format!(
                    "no greeting within {secs} s (QEMU serves one client per -qmp socket: \
                     if this is QEMU's, another client holds it; give QEMU a second -qmp)"
                )))
            }
            Err(QmpError::Gone { .. }) => {
                return Err(not_qmp(
                    "it closed the connection without a greeting".into(),
                ))
            }
            Err(QmpError::Protocol { why, .. }) => return Err(not_qmp(why)),
            Err(e) => return Err(e),
        };
        let v = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .ok_or_else(|| not_qmp(format!("its first message is not a greeting: {greeting}")))?;
        let n = |k: &str| v["qemu"][k].as_u64().unwrap_or(0);
        c.version = QemuVersion {
            numbers: (n("major"), n("minor"), n("micro")),
            package: v["package"].as_str().unwrap_or("").to_string(),
        };
        c.execute("qmp_capabilities", json!({}))?;
        Ok(c)
    }

    /// Runs one command and returns its `return` value; events on the way are kept for
    /// `wait_event`.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let msg = json!({"execute": command, "arguments": arguments});
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = self.stream.write_all(&bytes) {
            return Err(self.read_error(e, command));
        }
        loop {
            let reply = self.next_message(command)?;
            if reply.get("event").is_some() {
                self.keep_event(reply);
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: e["class"].as_str().unwrap_or("?").into(),
                    desc: e["desc"].as_str().unwrap_or("?").into(),
                });
            }
            return Err(QmpError::Protocol {
                command: command.into(),
                why: format!("neither return nor error: {reply}"),
            });
        }
    }

    /// An HMP command through `human-monitor-command`; its text output.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        let r = self.execute(
            "human-monitor-command",
            json!({"command-line": command_line}),
        )?;
        r.as_str()
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol {
                command: format!("human-monitor-command {command_line:?}"),
                why: format!("not a string: {r}"),
            })
    }

    fn keep_event(&mut self, event: Value) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next event named `name` (one that came earlier and was kept, or one that
    /// comes within `wait`); None when none came in time. Other events are dropped.
    /// Used as a wake-up: QEMU rate-limits some events (MEMORY_DEVICE_SIZE_CHANGE to
    /// one a second per device), so the caller still asks for the state itself.
    pub fn wait_event(&mut self, name: &str, wait: Duration) -> Result<Option<Value>, QmpError> {
        let is = |e: &Value| e["event"].as_str() == Some(name);
        while let Some(e) = self.events.pop_front() {
            if is(&e) {
                return Ok(Some(e));
            }
        }
        let deadline = std::time::Instant::now() + wait;
        let result = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Ok(None);
            }
            if let Err(source) = self.stream.set_read_timeout(Some(left)) {
                break Err(QmpError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            match self.next_message(name) {
                Ok(m) if is(&m) => break Ok(Some(m)),
                Ok(m) if m.get("event").is_some() => continue,
                Ok(m) => {
                    break Err(QmpError::Protocol {
                        command: format!("waiting for {name}"),
                        why: format!("a message that is no event, with no command asked: {m}"),
                    })
                }
                Err(QmpError::Timeout { .. }) => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        result
    }

    fn read_error(&self, e: std::io::Error, during: &str) -> QmpError {
        use std::io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => QmpError::Timeout {
                path: self.path.clone(),
                during: during.into(),
                secs: self.timeout.as_secs(),
            },
            BrokenPipe | ConnectionReset | UnexpectedEof => QmpError::Gone {
                path: self.path.clone(),
                during: during.into(),
            },
            _ => QmpError::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }

    /// The next JSON object from QEMU.
    fn next_message(&mut self, during: &str) -> Result<Value, QmpError> {
        let mut buf = [0u8; 8192];
        let raw = loop {
            if let Some(raw) = self.pending.pop_front() {
                break raw;
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(QmpError::Gone {
                        path: self.path.clone(),
                        during: during.into(),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e, during)),
            };
            let mut out = Vec::new();
            self.framer
                .feed(&buf[..n], &mut out)
                .map_err(|e| QmpError::Protocol {
                    command: during.into(),
                    why: e.to_string(),
                })?;
            self.pending.extend(out);
        };
        let v: Value = serde_json::from_slice(&raw).map_err(|e| QmpError::Protocol {
            command: during.into(),
            why: format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            ),
        })?;
        if !v.is_object() {
            return Err(QmpError::Protocol {
                command: during.into(),
                why: format!("not a JSON object: {v}"),
            });
        }
        Ok(v)
    }
}
