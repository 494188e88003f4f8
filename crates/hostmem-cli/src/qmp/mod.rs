//! The QMP monitor of `hostmem run`: QEMU's Machine Protocol on a Unix socket, for the
//! memory-backend part of QEMU's command set (docs/qmp.md).
//!
//! One thread per client, so a slow command (a preallocation of GiBs) or a client that
//! stops reading never holds up the others. Every request is bounded in size, every
//! write in time; nothing a client sends can panic the server. The serve loop ends on
//! `quit`, SIGINT or SIGTERM; then running preallocations are cancelled, commands in
//! flight are waited for, the socket file is removed and the backends are handed back
//! to be deleted.

mod args;
mod commands;
mod error;
mod framer;
mod qom;
mod registry;
mod request;

use std::io::{ErrorKind, Read, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostmem::{Backend, MachineDefaults, Progress};
use serde_json::{json, Value};

use crate::signals::{Events, Stop};
use commands::After;
use error::QmpError;
use framer::Framer;
use registry::Registry;

/// Largest request accepted; a client that sends more is answered and disconnected.
pub const MAX_REQUEST: usize = 1 << 20;
/// A client that does not take a reply for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are told so and disconnected.
const MAX_CLIENTS: usize = 64;
/// How long shutdown waits for commands in flight after cancelling preallocations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `-qmp` text is not a socket this monitor can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    NotUnix(String),
    EmptyPath,
    BadOption(String),
    ClientMode,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::NotUnix(s) => write!(
                f,
                "'{s}': only Unix sockets are served (unix:PATH[,server=on][,wait=off] or PATH)"
            ),
            SpecError::EmptyPath => write!(f, "the socket path is empty"),
            SpecError::BadOption(o) => write!(
                f,
                "option '{o}' is not one hostmem takes (server=on, wait=on|off)"
            ),
            SpecError::ClientMode => {
                write!(
                    f,
                    "server=off (connecting out) is not supported; hostmem only listens"
                )
            }
        }
    }
}

/// Parses `-qmp`: `unix:PATH[,server=on][,wait=off]` (QEMU's chardev spelling; also the
/// old `server`/`nowait` flags) or a bare PATH. `wait` changes nothing here: the
/// backends are made before the socket is listening either way.
pub fn parse_spec(text: &str) -> Result<PathBuf, SpecError> {
    let Some(rest) = text.strip_prefix("unix:") else {
        let looks_like_uri = text.split_once(':').is_some_and(|(scheme, _)| {
            ["tcp", "stdio", "vsock", "udp", "telnet"].contains(&scheme)
        });
        if looks_like_uri {
            return Err(SpecError::NotUnix(text.to_string()));
        }
        if text.is_empty() {
            return Err(SpecError::EmptyPath);
        }
        return Ok(PathBuf::from(text));
    };
    let mut items = rest.split(',');
    let path = items.next().unwrap_or_default();
    if path.is_empty() {
        return Err(SpecError::EmptyPath);
    }
    for item in items {
        match item.split_once('=') {
            Some(("server", v)) => match hostmem::props::parse_bool(v) {
                Some(true) => {}
                Some(false) => return Err(SpecError::ClientMode),
                None => return Err(SpecError::BadOption(item.to_string())),
            },
            Some(("wait", v)) if hostmem::props::parse_bool(v).is_some() => {}
            None if item == "server" || item == "nowait" => {}
            _ => return Err(SpecError::BadOption(item.to_string())),
        }
    }
    Ok(PathBuf::from(path))
}

/// Why the monitor could not start.
#[derive(Debug)]
pub enum ServeError {
    /// Something that is not a stale socket is at the path.
    PathTaken(PathBuf, &'static str),
    Bind(PathBuf, std::io::Error),
    Thread(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::PathTaken(p, why) => write!(f, "{}: {why}", p.display()),
            ServeError::Bind(p, e) => write!(
                f,
                "cannot listen on {}: {}",
                p.display(),
                hostmem::sys::strerror(e)
            ),
            ServeError::Thread(e) => write!(f, "cannot start the monitor thread: {e}"),
        }
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    pub negotiated: bool,
    pub oob: bool,
}

struct Client {
    id: u64,
    writer: Arc<Mutex<UnixStream>>,
    negotiated: Arc<AtomicBool>,
}

/// What every connection thread shares.
pub struct Shared {
    registry: Registry,
    defaults: MachineDefaults,
    stop: Mutex<Sender<Stop>>,
    stopping: AtomicBool,
    clients: Mutex<Vec<Client>>,
    next_client: AtomicU64,
    /// Commands running now, and a signal for when none is.
    running: Mutex<usize>,
    idle: Condvar,
    preallocs: Mutex<Vec<Arc<Progress>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A preallocation that quit and signals can cancel; unregistered on drop.
pub struct Tracked<'a> {
    shared: &'a Shared,
    progress: Arc<Progress>,
}

impl std::ops::Deref for Tracked<'_> {
    type Target = Progress;
    fn deref(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        lock(&self.shared.preallocs).retain(|p| !Arc::ptr_eq(p, &self.progress));
    }
}

/// Counts a command as running until dropped (also on unwinding).
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut n = lock(&self.0.running);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Shared {
    fn new(backends: Vec<Backend>, defaults: MachineDefaults, stop: Sender<Stop>) -> Self {
        Shared {
            registry: Registry::new(backends),
            defaults,
            stop: Mutex::new(stop),
            stopping: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
            next_client: AtomicU64::new(0),
            running: Mutex::new(0),
            idle: Condvar::new(),
            preallocs: Mutex::new(Vec::new()),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A progress for a preallocation, cancelled if the server stops meanwhile.
    pub fn track_prealloc(&self) -> Tracked<'_> {
        let progress = Arc::new(Progress::new());
        lock(&self.preallocs).push(progress.clone());
        if self.stopping() {
            progress.cancel();
        }
        Tracked {
            shared: self,
            progress,
        }
    }

    fn begin(&self) -> Option<Running<'_>> {
        let mut n = lock(&self.running);
        if self.stopping() {
            return None;
        }
        *n += 1;
        Some(Running(self))
    }

    /// Sends QEMU's SHUTDOWN event to every negotiated client. A client whose writer
    /// is busy (blocked on a full socket) is skipped rather than waited for.
    pub fn broadcast_shutdown(&self, reason: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let event = json!({
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
            "event": "SHUTDOWN",
            "data": {"guest": false, "reason": reason},
        });
        let line = message_bytes(&event);
        for c in lock(&self.clients).iter() {
            if c.negotiated.load(Ordering::SeqCst) {
                if let Ok(mut w) = c.writer.try_lock() {
                    let _ = w.write_all(&line);
                }
            }
        }
    }
}

fn message_bytes(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Removes a leftover socket nobody listens on; refuses to touch anything else.
fn clear_stale(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::PathTaken(
            path.to_path_buf(),
            "exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServeError::PathTaken(
            path.to_path_buf(),
            "a server is listening on this socket already",
        )),
        Err(_) => std::fs::remove_file(path).map_err(|e| ServeError::Bind(path.to_path_buf(), e)),
    }
}

/// The socket file, removed on drop if it is still the one this server made.
struct SocketFile {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.st_dev(), m.st_ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates the listening socket with mode 0600 from the start: bind(2) takes no mode,
/// so the umask decides it; it is narrowed around the bind (no other thread creates
/// files at this point).
fn listen(path: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
    clear_stale(path)?;
    let listener = hostmem::sys::with_umask(0o177, || UnixListener::bind(path))
        .map_err(|e| ServeError::Bind(path.to_path_buf(), e))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| ServeError::Bind(path.to_path_buf(), e))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev_ino: (m.st_dev(), m.st_ino()),
        },
    ))
}

/// Serves QMP on `path` over `backends` until `quit`, SIGINT or SIGTERM (or whatever
/// else sends on `events`). Returns the backends that are left, for deletion.
pub fn serve(
    path: &Path,
    backends: Vec<Backend>,
    defaults: MachineDefaults,
    events: &Events,
) -> Result<Vec<Backend>, ServeError> {
    let (listener, socket_file) = listen(path)?;
    let shared = Arc::new(Shared::new(backends, defaults, events.tx.clone()));
    let acceptor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || accept_loop(&shared, listener))
            .map_err(ServeError::Thread)?
    };
    eprintln!("hostmem: QMP monitor listening on {}", path.display());
    let stop = events.rx.recv().unwrap_or(Stop::StdinClosed);
    // Order matters: refuse new commands, cancel preallocations, then wait.
    {
        let _n = lock(&shared.running);
        shared.stopping.store(true, Ordering::SeqCst);
    }
    if let Stop::Signal(_) = stop {
        shared.broadcast_shutdown("host-signal");
    }
    for p in lock(&shared.preallocs).iter() {
        p.cancel();
    }
    // Wake the acceptor so it sees `stopping`; then the listener closes.
    if UnixStream::connect(path).is_ok() {
        let _ = acceptor.join();
    }
    drop(socket_file);
    {
        let n = lock(&shared.running);
        let _ = shared.idle.wait_timeout_while(n, DRAIN_TIMEOUT, |n| *n > 0);
    }
    for c in lock(&shared.clients).iter() {
        let _ = lock(&c.writer).shutdown(std::net::Shutdown::Both);
    }
    Ok(shared.registry.drain())
}

fn accept_loop(shared: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("qmp-client".into())
            .spawn(move || connection(&shared2, stream));
        if spawned.is_err() {
            // Out of threads: the stream was moved into the closure and is dropped
            // with it, which closes the connection.
            continue;
        }
    }
}

/// Writes one message; false when the client is gone or too slow.
fn send(writer: &Mutex<UnixStream>, v: &Value) -> bool {
    lock(writer).write_all(&message_bytes(v)).is_ok()
}

fn connection(shared: &Shared, stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(stream));
    let negotiated = Arc::new(AtomicBool::new(false));
    let id = shared.next_client.fetch_add(1, Ordering::SeqCst);
    {
        let mut clients = lock(&shared.clients);
        if clients.len() >= MAX_CLIENTS {
            drop(clients);
            let e = QmpError::generic(format!("too many QMP clients (at most {MAX_CLIENTS})"));
            send(&writer, &e.reply(None));
            return;
        }
        clients.push(Client {
            id,
            writer: writer.clone(),
            negotiated: negotiated.clone(),
        });
    }
    let greeting = json!({"QMP": {"version": commands::version(), "capabilities": ["oob"]}});
    if send(&writer, &greeting) {
        converse(shared, &mut reader, &writer, &negotiated);
    }
    lock(&shared.clients).retain(|c| c.id != id);
    let _ = lock(&writer).shutdown(std::net::Shutdown::Both);
}

/// Reads requests and answers them in order until the client leaves, misbehaves past
/// recovery, or the server stops.
fn converse(
    shared: &Shared,
    reader: &mut UnixStream,
    writer: &Mutex<UnixStream>,
    negotiated: &AtomicBool,
) {
    let mut framer = Framer::new(MAX_REQUEST);
    let mut session = Session::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut messages = Vec::new();
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let framed = framer.feed(&chunk[..n], &mut messages);
        for m in messages.drain(..) {
            let Some(running) = shared.begin() else {
                return;
            };
            let (reply, after) = answer(shared, &mut session, &m);
            negotiated.store(session.negotiated, Ordering::SeqCst);
            let sent = send(writer, &reply);
            drop(running);
            if after == After::Quit {
                let _ = lock(&shared.stop).send(Stop::Quit);
            }
            if !sent {
                return;
            }
        }
        if let Err(e) = framed {
            send(writer, &QmpError::generic(e.to_string()).reply(None));
            return;
        }
    }
}

/// The reply to one message. A panic in a command (a bug, never input) becomes an
/// error reply instead of a dead connection.
fn answer(shared: &Shared, session: &mut Session, message: &[u8]) -> (Value, After) {
    let req = match request::parse(message, session.oob) {
        Ok(r) => r,
        Err(refused) => return (refused.error.reply(refused.id.as_ref()), After::Continue),
    };
    let run = std::panic::AssertUnwindSafe(|| {
        commands::execute(shared, session, &req.command, req.arguments, req.oob)
    });
    let result = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(QmpError::generic(format!(
            "internal error in {}; the command may have had part of its effect",
            req.command
        )))
    });
    match result {
        Ok((ret, after)) => {
            let mut r = json!({"return": ret});
            if let Some(id) = req.id {
                r["id"] = id;
            }
            (r, after)
        }
        Err(e) => (e.reply(req.id.as_ref()), After::Continue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_socket_spellings() {
        let p = |s| parse_spec(s);
        assert_eq!(
            p("unix:/tmp/q.sock,server=on,wait=off"),
            Ok("/tmp/q.sock".into())
        );
        assert_eq!(
            p("unix:/tmp/q.sock,server,nowait"),
            Ok("/tmp/q.sock".into())
        );
        assert_eq!(p("unix:rel.sock"), Ok("rel.sock".into()));
        assert_eq!(p("/run/hostmem.qmp"), Ok("/run/hostmem.qmp".into()));
        assert_eq!(p("unix:/x,server=off"), Err(SpecError::ClientMode));
        assert_eq!(
            p("unix:/x,speed=9"),
            Err(SpecError::BadOption("speed=9".into()))
        );
        assert_eq!(p("unix:"), Err(SpecError::EmptyPath));
        assert!(matches!(
            p("tcp:localhost:4444,server=on"),
            Err(SpecError::NotUnix(_))
        ));
    }
}
