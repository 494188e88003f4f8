//! The socket server: a Unix socket made with mode 0600, one thread per client, and
//! the orderly stop on `quit`, SIGINT or SIGTERM. A thread per client means a slow
//! command (a preallocation of GiBs) or a client that stops reading never holds up the
//! others; every write is bounded in time and the number of clients is bounded.

use std::io::{ErrorKind, Read, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostmem::objects::Objects;
use hostmem::MachineDefaults;
use rustix::fs::Mode;
use rustix::process::umask;
use serde_json::Value;

use super::conversation::{Conversation, Flow};
use super::error::QmpError;
use super::limits::Limits;
use super::monitor::Monitor;
use super::registry::{NotDeleted, Registry};
use super::shared::{lock, message_bytes, Client, Shared};
use crate::signals::{Events, Stop};

/// A client that does not take a reply for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are told so and disconnected.
const MAX_CLIENTS: usize = 64;
/// How long shutdown waits for commands in flight after cancelling preallocations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    // Bound and listening under a temporary name first, then renamed into place: the
    // socket file appears only once it accepts connections (between bind and listen a
    // client that saw the file would be refused). A name too long for sun_path binds
    // in place instead.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let staged = tmp.as_os_str().len() < 100;
    let at = if staged { tmp.as_path() } else { path };
    let old = umask(Mode::XUSR | Mode::RWXG | Mode::RWXO);
    let bound = UnixListener::bind(at);
    umask(old);
    let listener = bound.map_err(|e| ServeError::Bind(path.to_path_buf(), e))?;
    if staged {
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ServeError::Bind(path.to_path_buf(), e));
        }
    }
    let m = std::fs::symlink_metadata(path).map_err(|e| ServeError::Bind(path.to_path_buf(), e))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev_ino: (m.st_dev(), m.st_ino()),
        },
    ))
}

/// Serves QMP on `path` over `objects` until `quit`, SIGINT or SIGTERM (or whatever
/// else sends on `events`). The monitor owns the objects from here on and deletes
/// every backend when it stops; it returns those it could not delete, by name.
pub fn serve(
    path: &Path,
    objects: Objects,
    defaults: MachineDefaults,
    events: &Events,
) -> Result<Vec<NotDeleted>, ServeError> {
    let (listener, socket_file) = listen(path)?;
    let shared = Arc::new(Shared::new(
        Registry::new(objects),
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
    Ok(shared.finish(DRAIN_TIMEOUT))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(os_error_text(&e), "Permission denied");
        let e = std::io::Error::other("no such thing");
        assert_eq!(os_error_text(&e), "no such thing");
    }
}
