//! The QMP monitor of `hostmem run`: QEMU's Machine Protocol on a Unix socket, for the
//! memory-backend part of QEMU's command set (docs/qmp.md).
//!
//! One thread per client, so a slow command (a preallocation of GiBs) or a client that
//! stops reading never holds up the others. Every request is bounded in size, every
//! write in time; nothing a client sends can panic the server. The serve loop ends on
//! `quit`, SIGINT or SIGTERM; then running preallocations are cancelled, commands in
//! flight are waited for, the socket file is removed and the backends are handed back
//! to be deleted.
//!
//! [`Monitor`] is the same request path without a socket (for the fuzz target and
//! tests): bytes in, replies out, through the [`Conversation`] every connection
//! thread runs.

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
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostmem::{Backend, MachineDefaults, Progress};
use rustix::fs::Mode;
use rustix::process::umask;
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
            ServeError::Bind(p, e) => {
                write!(f, "cannot listen on {}: {}", p.display(), os_error_text(e))
            }
            ServeError::Thread(e) => write!(f, "cannot start the monitor thread: {e}"),
        }
    }
}

/// An I/O error's text without Rust's ` (os error N)` suffix, as C's strerror gives it:
/// messages here read like QEMU's (`cannot listen on PATH: Permission denied`).
fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Bounds a monitor puts on what clients may create. The socket server sets none
/// ([`Limits::default`], the operator decides what the host can give); an in-process
/// monitor that takes arbitrary input (the fuzz target) sets them so that no request
/// can make it allocate more than it can afford or touch files outside a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest `size` an `object-add` may ask for, in bytes.
    pub max_backend_size: Option<u64>,
    /// The directory `mem-path` of a file backend must be in (compared component by
    /// component, `..` refused).
    pub mem_path_under: Option<PathBuf>,
}

impl Limits {
    /// Refuses a backend these limits do not allow, before anything is mapped.
    pub fn check(&self, id: &str, cfg: &hostmem::props::Config) -> Result<(), QmpError> {
        if let (Some(max), Some(size)) = (self.max_backend_size, cfg.size) {
            if size > max {
                return Err(QmpError::generic(format!(
                    "object '{id}': size {size} exceeds this monitor's limit of {max} bytes"
                )));
            }
        }
        if let (Some(dir), Some(path)) = (&self.mem_path_under, &cfg.mem_path) {
            let inside = path.starts_with(dir)
                && !path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if !inside {
                return Err(QmpError::generic(format!(
                    "object '{id}': mem-path {} is outside {}, the directory this monitor allows",
                    path.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
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
    limits: Limits,
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
    fn new(
        backends: Vec<Backend>,
        defaults: MachineDefaults,
        limits: Limits,
        stop: Sender<Stop>,
    ) -> Self {
        Shared {
            registry: Registry::new(backends),
            defaults,
            limits,
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
/// files at this point) and put back right after.
fn listen(path: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
    clear_stale(path)?;
    let old = umask(Mode::XUSR | Mode::RWXG | Mode::RWXO);
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|e| ServeError::Bind(path.to_path_buf(), e))?;
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
    let shared = Arc::new(Shared::new(
        backends,
        defaults,
        Limits::default(),
        events.tx.clone(),
    ));
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
    if send(&writer, &Monitor::greeting()) {
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
    let mut conversation = Conversation::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let flow = conversation.feed(shared, &chunk[..n], |session, reply| {
            negotiated.store(session.negotiated, Ordering::SeqCst);
            send(writer, reply)
        });
        if flow == Flow::Closed {
            return;
        }
    }
}

/// Whether a connection goes on after what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open,
    /// The client is to be disconnected: it sent too much, could not take a reply, or
    /// the server is stopping.
    Closed,
}

/// One connection's protocol: the framer that splits its bytes into requests and the
/// session they run in. Each connection thread of the socket server runs one, and so
/// does [`Monitor`].
#[derive(Debug)]
pub struct Conversation {
    framer: Framer,
    session: Session,
    messages: Vec<Vec<u8>>,
}

impl Default for Conversation {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversation {
    pub fn new() -> Self {
        Conversation {
            framer: Framer::new(MAX_REQUEST),
            session: Session::default(),
            messages: Vec::new(),
        }
    }

    /// Takes bytes as they came from the client and answers every request they
    /// complete, in order. `deliver` gets each reply (with the session as it is after
    /// the request) and says whether it reached the client.
    pub fn feed(
        &mut self,
        shared: &Shared,
        bytes: &[u8],
        mut deliver: impl FnMut(&Session, &Value) -> bool,
    ) -> Flow {
        let framed = self.framer.feed(bytes, &mut self.messages);
        for m in std::mem::take(&mut self.messages) {
            let Some(running) = shared.begin() else {
                return Flow::Closed;
            };
            let (reply, after) = answer(shared, &mut self.session, &m);
            let sent = deliver(&self.session, &reply);
            drop(running);
            if after == After::Quit {
                // QEMU answers `quit` first, then announces the shutdown.
                shared.broadcast_shutdown("host-qmp-quit");
                let _ = lock(&shared.stop).send(Stop::Quit);
            }
            if !sent {
                return Flow::Closed;
            }
        }
        if let Err(e) = framed {
            deliver(&self.session, &QmpError::generic(e.to_string()).reply(None));
            return Flow::Closed;
        }
        Flow::Open
    }
}

/// The monitor in process, without a socket: one client's bytes in, the replies the
/// socket server would send out, through the same [`Conversation`]. Backends are
/// deleted when it is dropped.
pub struct Monitor {
    shared: Shared,
    conversation: Conversation,
    closed: bool,
    stop: Receiver<Stop>,
}

impl Monitor {
    pub fn new(backends: Vec<Backend>, defaults: MachineDefaults, limits: Limits) -> Self {
        let (tx, stop) = channel();
        Monitor {
            shared: Shared::new(backends, defaults, limits, tx),
            conversation: Conversation::new(),
            closed: false,
            stop,
        }
    }

    /// The greeting a client gets on connecting.
    pub fn greeting() -> Value {
        json!({"QMP": {"version": commands::version(), "capabilities": ["oob"]}})
    }

    /// Feeds the client's bytes; returns the replies. Once the connection is closed
    /// (a request past [`MAX_REQUEST`]), nothing more is read, as on the socket.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Value> {
        let mut replies = Vec::new();
        if self.closed {
            return replies;
        }
        let flow = self.conversation.feed(&self.shared, bytes, |_, r| {
            replies.push(r.clone());
            true
        });
        self.closed = flow == Flow::Closed;
        replies
    }

    /// Whether the connection was closed by the server.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a `quit` was answered (the socket server would stop now).
    pub fn quit_requested(&self) -> bool {
        self.stop.try_recv().is_ok()
    }

    /// The ids of the live backends, in creation order.
    pub fn backend_ids(&self) -> Vec<String> {
        self.shared
            .registry
            .live()
            .iter()
            .map(|e| e.id.clone())
            .collect()
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

    fn monitor(limits: Limits) -> Monitor {
        let mut m = Monitor::new(Vec::new(), MachineDefaults::default(), limits);
        assert_eq!(
            m.feed(b"{'execute': 'qmp_capabilities'}"),
            [json!({"return": {}})]
        );
        m
    }

    fn add(m: &mut Monitor, args: Value) -> Value {
        let req = json!({"execute": "object-add", "arguments": args});
        let mut r = m.feed(&message_bytes(&req));
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    fn error_desc(reply: &Value) -> &str {
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
    }

    #[test]
    fn in_process_monitor_frames_and_answers_like_the_socket() {
        let mut m = Monitor::new(Vec::new(), MachineDefaults::default(), Limits::default());
        assert_eq!(
            m.feed(b"{\"execute\": \"query-memdev\"}")[0]["error"]["class"],
            "CommandNotFound"
        );
        // A request cut into single bytes, two on one line, one across lines.
        let text = b"{\"execute\":\"qmp_capabilities\"}{\"execute\": \"object-add\", \"arguments\":\n{\"qom-type\": \"memory-backend-ram\", \"id\": \"r\", \"size\": 2097152}, \"id\": 7}";
        let mut replies = Vec::new();
        for b in text.iter() {
            replies.extend(m.feed(std::slice::from_ref(b)));
        }
        assert_eq!(
            replies,
            [json!({"return": {}}), json!({"return": {}, "id": 7})]
        );
        assert_eq!(m.backend_ids(), ["r"]);
        let r = m.feed(b"{'execute': 'query-memdev'} {'execute': 'quit'}");
        assert_eq!(r[0]["return"][0]["size"], 2 << 20);
        assert_eq!(r[1], json!({"return": {}}));
        assert!(m.quit_requested() && !m.is_closed());
    }

    #[test]
    fn one_request_may_be_1_mib_and_not_a_byte_more() {
        let mut m = monitor(Limits::default());
        let envelope = |pad: usize| {
            let head = b"{\"execute\": \"query-version\", \"id\": \"";
            let mut v = head.to_vec();
            v.extend(std::iter::repeat_n(b'x', pad - head.len() - 2));
            v.extend_from_slice(b"\"}");
            assert_eq!(v.len(), pad);
            v
        };
        let r = m.feed(&envelope(MAX_REQUEST));
        assert!(r[0]["return"]["package"].is_string(), "{:?}", r[0]["error"]);
        let r = m.feed(&envelope(MAX_REQUEST + 1));
        assert_eq!(
            error_desc(&r[0]),
            "QMP input exceeds 1048576 bytes; closing the connection"
        );
        assert!(m.is_closed());
        assert!(m.feed(b"{'execute': 'query-version'}").is_empty());
    }

    #[test]
    fn limits_refuse_before_mapping_and_the_server_sets_none() {
        let dir = std::env::temp_dir().join(format!("hostmem-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let outside = dir.with_extension("outside");
        let mut m = monitor(Limits {
            max_backend_size: Some(4 << 20),
            mem_path_under: Some(dir.clone()),
        });
        let r = add(
            &mut m,
            json!({"qom-type": "memory-backend-ram", "id": "big", "size": 8 << 20, "prealloc": true}),
        );
        assert_eq!(
            error_desc(&r),
            "object 'big': size 8388608 exceeds this monitor's limit of 4194304 bytes"
        );
        assert!(m.backend_ids().is_empty());
        let file = |path: &Path| {
            json!({"qom-type": "memory-backend-file", "id": "f", "size": 2 << 20,
                   "mem-path": path.to_str().unwrap()})
        };
        for bad in [outside.clone(), dir.join("../x")] {
            let r = add(&mut m, file(&bad));
            assert!(error_desc(&r).contains("is outside"), "{r}");
            assert!(!bad.exists(), "{} was created", bad.display());
        }
        assert_eq!(
            add(&mut m, file(&dir.join("inside"))),
            json!({"return": {}})
        );
        assert!(dir.join("inside").exists());
        assert_eq!(m.backend_ids(), ["f"]);
        drop(m);
        std::fs::remove_dir_all(&dir).unwrap();
        // Unlimited (what `serve` uses): the same request passes.
        let mut m = monitor(Limits::default());
        let r = add(
            &mut m,
            json!({"qom-type": "memory-backend-ram", "id": "big", "size": 8 << 20}),
        );
        assert_eq!(r, json!({"return": {}}));
    }

    #[test]
    fn os_errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(os_error_text(&e), "Permission denied");
        let e = std::io::Error::other("no such thing");
        assert_eq!(os_error_text(&e), "no such thing");
    }

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
