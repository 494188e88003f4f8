//! `hostmem uffd-handler`: the page-fault handler a Firecracker snapshot load with
//! `"mem_backend": {"backend_type": "Uffd", "backend_path": SOCKET}` connects to, so its
//! users need not write one. Each connection is one VM: its handshake (the region list
//! and the userfaultfd, `hostmem::snapshot::firecracker`) is checked, and its faults are
//! served from the memory file by the lazy-restore engine (checked blocks, zeros for
//! holes and for pages the balloon discarded, the rest filled in the background) until
//! the VM exits. Everything is said on stderr, one line per event, each naming the
//! connection and Firecracker's pid: Firecracker does not read the socket after its
//! handshake, so a refused handshake can only be said here (and by `--once`'s exit
//! status).

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hostmem::size::format_size;
use hostmem::snapshot::firecracker::{self, Handshake, Mapping};
use hostmem::snapshot::{LazyOptions, LazyProgress};

pub const EXAMPLES: &str = "Examples:
  hostmem uffd-handler --socket /run/fc/uffd.sock --image /snap/mem
        serve every Firecracker that loads a snapshot with
        \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"/run/fc/uffd.sock\"}
  hostmem uffd-handler --socket uffd.sock --image vm.img --once
        a hostmem image instead of Firecracker's raw file; one VM, then exit";

const TAG: &str = "hostmem uffd-handler";

#[derive(Args)]
pub struct UffdArgs {
    /// The Unix socket to listen on: Firecracker's `mem_backend.backend_path`. A stale
    /// socket there is replaced; any other file is refused.
    #[arg(long)]
    socket: PathBuf,
    /// The guest memory: Firecracker's memory file (`mem_file_path` of its snapshot
    /// create; each region's `offset` is a file offset), or a hostmem image (the offsets
    /// are then backend offsets).
    #[arg(long)]
    image: PathBuf,
    /// Serve one VM, then exit: 0 when it was served until it exited or was filled, 1
    /// when its handshake was refused or serving failed.
    #[arg(long)]
    once: bool,
    /// Seconds a connection has to send its whole handshake.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Serve faults only; no background fill of untouched pages.
    #[arg(long)]
    no_fill: bool,
    /// SIGKILL the VM's process (its pid from the socket) when its handshake is refused
    /// or a page cannot be served, as Firecracker's example handler does when it fails:
    /// Firecracker does not read the socket, so such a VM would otherwise hang on its
    /// first fault (or take SIGBUS later).
    #[arg(long)]
    kill_on_error: bool,
}

/// What one connection needs to be served.
struct Serve {
    image: PathBuf,
    timeout: Duration,
    fill: bool,
    kill: bool,
}

/// One connection: how its lines name it, and whom `--kill-on-error` stops.
struct Vm {
    who: String,
    pid: Option<i32>,
    kill: bool,
    /// Killed already: once is enough.
    killed: std::cell::Cell<bool>,
}

impl Vm {
    /// Says what failed; with `--kill-on-error`, stops the VM's process.
    fn failed(&self, what: &str) {
        eprintln!("{TAG}: {}: {what}", self.who);
        let Some(pid) = self.pid.filter(|_| self.kill && !self.killed.replace(true)) else {
            return;
        };
        let killed = rustix::process::Pid::from_raw(pid)
            .ok_or(rustix::io::Errno::SRCH)
            .and_then(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL));
        match killed {
            Ok(()) => eprintln!("{TAG}: {}: killed pid {pid} (--kill-on-error)", self.who),
            Err(e) => eprintln!("{TAG}: {}: could not kill pid {pid}: {e}", self.who),
        }
    }
}

pub fn main(args: UffdArgs) -> ExitCode {
    if let Err(e) = File::open(&args.image) {
        eprintln!("{TAG}: cannot open {}: {e}", args.image.display());
        return ExitCode::from(1);
    }
    let timeout = match Duration::try_from_secs_f64(args.handshake_timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("{TAG}: --handshake-timeout must be a positive number of seconds");
            return ExitCode::from(2);
        }
    };
    let listener = match bind(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{TAG}: cannot listen on {}: {e}", args.socket.display());
            return ExitCode::from(1);
        }
    };
    remove_on_signal(args.socket.clone());
    eprintln!(
        "{TAG}: listening on {}, serving {}",
        args.socket.display(),
        args.image.display()
    );
    let serve = Arc::new(Serve {
        image: args.image,
        timeout,
        fill: !args.no_fill,
        kill: args.kill_on_error,
    });
    for (n, conn) in (1u64..).zip(listener.incoming()) {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{TAG}: accept failed: {e}");
                continue;
            }
        };
        if args.once {
            let ok = connection(n, stream, &serve);
            let _ = std::fs::remove_file(&args.socket);
            return ExitCode::from(if ok { 0 } else { 1 });
        }
        let serve = Arc::clone(&serve);
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{n}"))
            .spawn(move || connection(n, stream, &serve));
        if let Err(e) = spawned {
            eprintln!("{TAG}: VM {n}: no thread to serve it: {e}");
        }
    }
    ExitCode::from(1)
}

/// Listens on `path`, replacing a socket nobody listens on any more.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                ErrorKind::AddrInUse,
                "another handler listens there",
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// SIGINT/SIGTERM: the socket file removed, exit 128 + the signal.
fn remove_on_signal(socket: PathBuf) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = std::fs::remove_file(&socket);
                eprintln!("{TAG}: stopped by signal {sig}");
                std::process::exit(128 + sig);
            }
        });
}

/// One VM: its handshake checked, then served. True when it was served to its end.
fn connection(n: u64, stream: UnixStream, serve: &Serve) -> bool {
    let peer = firecracker::peer(&stream);
    let vm = Vm {
        who: match peer {
            Some(p) => format!("VM {n} (pid {}, uid {})", p.pid, p.uid),
            None => format!("VM {n}"),
        },
        pid: peer.map(|p| p.pid),
        kill: serve.kill,
        killed: std::cell::Cell::new(false),
    };
    let hs = match firecracker::receive(&stream, serve.timeout) {
        Ok(hs) => hs,
        Err(e) => {
            vm.failed(&format!("refused the handshake: {e}"));
            return false;
        }
    };
    eprintln!(
        "{TAG}: {}: handshake: {}: {}",
        vm.who,
        summary(&hs.mappings),
        hs.body
    );
    match serve_vm(&vm, hs, serve, &stream) {
        Ok(()) => true,
        Err(e) => {
            if let Some(e) = e {
                vm.failed(&e);
            }
            false
        }
    }
}

/// "2 regions, 4 KiB pages, 128 MiB".
fn summary(maps: &[Mapping]) -> String {
    let total: u64 = maps.iter().map(|m| m.size).sum();
    let mut pages: Vec<u64> = maps.iter().map(|m| m.page_size).collect();
    pages.dedup();
    let pages: Vec<String> = pages.iter().map(|&p| format_size(p)).collect();
    format!(
        "{} region{}, {} pages, {}",
        maps.len(),
        if maps.len() == 1 { "" } else { "s" },
        pages.join("/"),
        format_size(total)
    )
}

/// Opens the memory for the regions and serves them until the VM exits (Firecracker's
/// end of the socket closes: it keeps it open for its life), saying when the fill ends
/// and every error as it comes. Serving goes on after the fill: a page the balloon
/// removed faults again and gets zeros, and Firecracker's `madvise` waits until its
/// REMOVE event is read.
/// `Err(None)`: failed, and said so already.
fn serve_vm(
    vm: &Vm,
    hs: Handshake,
    serve: &Serve,
    stream: &UnixStream,
) -> Result<(), Option<String>> {
    let who = &vm.who;
    let opts = LazyOptions {
        background: serve.fill,
        ..LazyOptions::default()
    };
    let (server, is_image) = firecracker::serve(hs, &serve.image, opts)
        .map_err(|e| Some(format!("refused the handshake: {e}")))?;
    let p = server.progress();
    eprintln!(
        "{TAG}: {who}: serving {} of data from {} ({})",
        format_size(p.bytes_total),
        serve.image.display(),
        if is_image {
            "hostmem image"
        } else {
            "raw memory file"
        }
    );
    let (mut said_filled, mut said_errors) = (false, 0);
    let ended = loop {
        let ended = vm_exited(stream);
        let p = server.progress();
        for e in p.errors.iter().skip(said_errors) {
            vm.failed(e);
        }
        said_errors = p.errors.len();
        if p.filled && !said_filled {
            said_filled = true;
            eprintln!("{TAG}: {who}: filled: {}", counters(&p));
        }
        if ended.is_some() || p.gone {
            break ended.unwrap_or_else(|| "its address space is gone".into());
        }
    };
    match server.stop() {
        Ok(report) => {
            eprintln!(
                "{TAG}: {who}: done ({ended}): {}",
                counters(&report.progress)
            );
            Ok(())
        }
        // Said already, as it came.
        Err(_) if said_errors > 0 => {
            eprintln!("{TAG}: {who}: done with errors ({ended})");
            Err(None)
        }
        Err(e) => Err(Some(format!("{ended}; serving failed: {e}"))),
    }
}

/// Waits up to a tenth of a second for the VM's end of the socket to close; why it
/// ended, if it did.
fn vm_exited(stream: &UnixStream) -> Option<String> {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 512];
    match std::io::Read::read(&mut &*stream, &mut sink) {
        Ok(0) => Some("the VM closed the connection".into()),
        Ok(_) => None,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            None
        }
        Err(e) => Some(format!("the connection failed: {e}")),
    }
}

/// "64 MiB of 64 MiB filled, 12 faults (3 zero) in 0.41 s".
fn counters(p: &LazyProgress) -> String {
    format!(
        "{} of {} filled, {} faults ({} zero), {} poisoned, in {:.2} s",
        format_size(p.bytes_filled),
        format_size(p.bytes_total),
        p.faults,
        p.zero_faults,
        format_size(p.poisoned_bytes),
        p.secs
    )
}
