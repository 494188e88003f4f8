//! `hostmem uffd-handler`, the real binary, against clients that speak Firecracker's
//! handshake: one that does what Firecracker does (`client.rs`: guest memory mapped,
//! a userfaultfd registered, the JSON and the uffd sent in one `sendmsg`, then every
//! page touched and compared with the memory file the test wrote), and ones that get it
//! wrong (`refused.rs`). Every wait has a deadline that fails the test.

mod client;
mod refused;

use std::io::{BufRead, BufReader};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hostmem_testkit::wait_until;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long any one step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// A fresh directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hostmem-uffd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The handler process, its stderr lines as they come; killed on drop.
pub struct Handler {
    pub child: Child,
    lines: Receiver<String>,
    /// Every line seen so far, for failure messages.
    pub seen: Vec<String>,
    pub socket: PathBuf,
}

impl Handler {
    /// `hostmem uffd-handler --socket DIR/uffd.sock --image IMAGE EXTRA...`, once it
    /// says it listens.
    pub fn start(dir: &Path, image: &Path, extra: &[&str]) -> Handler {
        let socket = dir.join("uffd.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hostmem"))
            .arg("uffd-handler")
            .arg("--socket")
            .arg(&socket)
            .arg("--image")
            .arg(image)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut h = Handler {
            child,
            lines,
            seen: Vec::new(),
            socket,
        };
        h.line(|l| l.contains("listening on"));
        h
    }

    /// Waits for a stderr line that `want` accepts; fails after [`STEP`].
    pub fn line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + STEP;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no such line within {STEP:?}; stderr so far: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the handler's stderr ended; it said: {:#?}", self.seen)
                }
            }
        }
    }

    /// A connection to its socket.
    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).unwrap()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What Firecracker's `send_with_fd` does: the body and the descriptors in one
/// `sendmsg` (SCM_RIGHTS). Written here with rustix, apart from hostmem's own sender.
pub fn send(stream: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let sent = sendmsg(
        stream,
        &[std::io::IoSlice::new(body)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(sent, body.len());
}

/// Waits until the handler closed its end of `stream` (a read gives EOF).
pub fn closed_by_handler(stream: &UnixStream) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    wait_until(
        STEP,
        || "the handler did not close the connection".into(),
        || {
            let mut b = [0u8; 16];
            match std::io::Read::read(&mut &*stream, &mut b) {
                Ok(0) => Ok(Some(())),
                Ok(n) => Err(format!("the handler wrote {n} bytes")),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
}
