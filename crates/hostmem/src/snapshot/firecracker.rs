//! Firecracker's userfaultfd handshake, the page-fault handler's side: so a Firecracker
//! user can point its snapshot load at hostmem (`hostmem uffd-handler`) instead of
//! writing a handler.
//!
//! What Firecracker does (src/vmm/src/persist.rs, `guest_memory_from_uffd` and
//! `send_uffd_handshake`): it maps guest memory anonymous private (MAP_HUGETLB for
//! `huge_pages: "2M"`), creates a userfaultfd (non-blocking, close-on-exec, kernel
//! faults too, `UFFD_FEATURE_EVENT_REMOVE` required for the balloon), registers every
//! region MISSING, connects to the handler's socket and sends, in **one** `sendmsg`,
//! a JSON array of regions as the body and the userfaultfd as SCM_RIGHTS:
//!
//! ```json
//! [{"base_host_virt_addr": 140170950356992, "size": 134217728, "offset": 0,
//!   "page_size": 4096, "page_size_kib": 4096}]
//! ```
//!
//! `offset` is where the region's bytes are in the memory file (regions back to back).
//! `page_size` is in bytes; `page_size_kib` is the same number in bytes too (a misnamed
//! field kept for compatibility: versions 1.7 to 1.11 sent only it, versions before 1.7
//! sent neither and used base pages). Firecracker keeps its end of the socket open
//! (no EOF after the body) and keeps its own copy of the userfaultfd, so a handler that
//! dies leaves the guest hung on its next fault, not running on zero pages. Its
//! secret-hiding branch sends three descriptors (userfaultfd, guest_memfd, a bitmap
//! memfd) and more fields; that protocol is refused here by name.
//!
//! Everything in the message is input from another process: [`receive`] and
//! [`parse_regions`] never panic on it and say which region and which field is wrong.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Image, LazyOptions, LazyRegion, LazyServer, RawRegion, Result, SnapshotError, MAGIC};
use crate::sys::scm;

/// Largest handshake body taken: thousands of regions fit; a peer that streams bytes
/// without ever closing the JSON is cut off here.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Page size assumed when the handshake names none (Firecracker before 1.7).
pub const DEFAULT_PAGE_SIZE: u64 = 4096;

/// One region of the handshake: `size` bytes of guest memory at `base_host_virt_addr`
/// in Firecracker's address space, whose contents are at `offset` in the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Start of the region in the sender's address space (registered with the uffd).
    pub base_host_virt_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the region's bytes are: a raw file's offset, or a hostmem image's backend
    /// offset.
    pub offset: u64,
    /// The page size of the guest memory (what a fault is served in).
    pub page_size: u64,
}

/// The sending process, as the kernel saw it connect (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id (Firecracker's): what a supervisor signals if the handler fails.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A handshake received and checked.
#[derive(Debug)]
pub struct Handshake {
    /// The regions, in the order sent.
    pub mappings: Vec<Mapping>,
    /// The userfaultfd, checked to be one.
    pub uffd: OwnedFd,
    /// Who sent it, when the kernel says.
    pub peer: Option<Peer>,
    /// The body as received (for a log).
    pub body: String,
}

/// Why a handshake was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Reading from the socket failed.
    #[error("reading the handshake failed: {0}")]
    Io(#[source] io::Error),
    /// The peer closed the connection before a complete JSON body.
    #[error("the connection closed before a complete handshake ({0} bytes received)")]
    Closed(usize),
    /// No complete body within the time allowed.
    #[error("no complete handshake within {0:?} ({1} bytes received)")]
    Timeout(Duration, usize),
    /// The body grew past [`MAX_MESSAGE`].
    #[error("the handshake is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// The body is not JSON.
    #[error("the handshake is not JSON: {0}")]
    Json(String),
    /// No descriptor came with the body.
    #[error("no file descriptor came with the handshake (Firecracker sends its userfaultfd as SCM_RIGHTS with the region list)")]
    NoFd,
    /// More than one descriptor came.
    #[error("{0} file descriptors came with the handshake, not 1: Firecracker's secret-hiding protocol (userfaultfd, guest_memfd, bitmap) is not supported")]
    Fds(String),
    /// The descriptor is something else.
    #[error("the file descriptor sent is not a userfaultfd (it is {0})")]
    NotUffd(String),
    /// The region list is wrong: which region, which field, why.
    #[error("{0}")]
    Regions(String),
}

/// Receives one handshake from a connected socket: the JSON body (read until it is a
/// complete JSON value — Firecracker does not close its end — at most
/// [`MAX_MESSAGE`] bytes, within `timeout`), its descriptors, and the peer. Then checks
/// it: exactly one descriptor and a userfaultfd, and the regions as
/// [`parse_regions`] says. Descriptors of a refused handshake are closed.
pub fn receive(
    stream: &UnixStream,
    timeout: Duration,
) -> std::result::Result<Handshake, HandshakeError> {
    // A timeout past any sensible wait (a year) is a year, so the deadline cannot overflow.
    let timeout = timeout.min(Duration::from_secs(365 * 86400));
    let deadline = Instant::now() + timeout;
    let (mut body, mut fds, mut truncated) = (Vec::new(), Vec::new(), false);
    let mut chunk = vec![0u8; 64 << 10];
    let value = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Timeout(timeout, body.len()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(HandshakeError::Io)?;
        let got = match scm::recv_with_fds(stream, &mut chunk) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::Timeout(timeout, body.len()))
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        };
        fds.extend(got.fds);
        truncated |= got.truncated;
        if got.len == 0 {
            return Err(HandshakeError::Closed(body.len()));
        }
        body.extend_from_slice(&chunk[..got.len]);
        if body.len() > MAX_MESSAGE {
            return Err(HandshakeError::TooLong);
        }
        match serde_json::Deserializer::from_slice(&body)
            .into_iter::<Value>()
            .next()
        {
            Some(Ok(v)) => break v,
            Some(Err(e)) if !e.is_eof() => return Err(HandshakeError::Json(e.to_string())),
            _ => {}
        }
    };
    let uffd = match (fds.len(), truncated) {
        (1, false) => fds.remove(0),
        (0, false) => return Err(HandshakeError::NoFd),
        (n, t) => {
            return Err(HandshakeError::Fds(if t {
                format!("more than {n}")
            } else {
                n.to_string()
            }))
        }
    };
    let mappings = parse_regions(&value).map_err(HandshakeError::Regions)?;
    let what = std::fs::read_link(format!("/proc/self/fd/{}", uffd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    if what != "anon_inode:[userfaultfd]" {
        return Err(HandshakeError::NotUffd(what));
    }
    Ok(Handshake {
        mappings,
        uffd,
        peer: peer(stream),
        body: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

/// The process at the other end of `stream` as it was when it connected
/// (`SO_PEERCRED`): Firecracker's pid, for the log and for a supervisor that must stop
/// a VM whose handler failed (Firecracker itself does not read the socket again).
pub fn peer(stream: &UnixStream) -> Option<Peer> {
    scm::peer_credentials(stream)
        .ok()
        .map(|(pid, uid, gid)| Peer { pid, uid, gid })
}

/// The region list of a handshake, checked: a non-empty array of objects with
/// `base_host_virt_addr`, `size`, `offset` (unsigned integers) and `page_size` or the
/// older `page_size_kib` (bytes; equal when both are given; 4096 when neither is), the
/// page size a power of two of at least 4096, every address, size and offset a whole
/// number of pages, no two regions overlapping in the guest's address space or in the
/// memory. Unknown fields are ignored (newer Firecrackers add some), except
/// `is_guest_memfd: true`, which is the secret-hiding protocol. The error names the
/// region (by its index in the array) and what is wrong with it.
pub fn parse_regions(v: &Value) -> std::result::Result<Vec<Mapping>, String> {
    let list = v.as_array().ok_or_else(|| {
        format!(
            "the handshake is {}, not a JSON array of regions \
             ([{{\"base_host_virt_addr\": ..., \"size\": ..., \"offset\": ..., \"page_size\": ...}}, ...])",
            kind_of(v)
        )
    })?;
    if list.is_empty() {
        return Err("the handshake lists no regions".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let obj = r
            .as_object()
            .ok_or_else(|| format!("region {i} is {}, not an object", kind_of(r)))?;
        let field = |name: &str| -> std::result::Result<Option<u64>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| {
                    format!("region {i}: \"{name}\" is {x}, not an unsigned integer")
                }),
            }
        };
        let need = |name: &str| field(name)?.ok_or_else(|| format!("region {i}: no \"{name}\""));
        let (base, size, offset) = (need(key::BASE)?, need(key::SIZE)?, need(key::OFFSET)?);
        let page_size = match (field(key::PAGE_SIZE)?, field(key::PAGE_SIZE_KIB)?) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                "region {i}: \"page_size\" {a} and \"page_size_kib\" {b} differ (both are bytes)"
            ))
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => DEFAULT_PAGE_SIZE,
        };
        if obj.get("is_guest_memfd") == Some(&Value::Bool(true)) {
            return Err(format!(
                "region {i}: \"is_guest_memfd\" is true: Firecracker's secret-hiding protocol is not supported"
            ));
        }
        if !page_size.is_power_of_two() || !(4096..=1 << 30).contains(&page_size) {
            return Err(format!(
                "region {i}: page size {page_size} is not a power of two from 4096 to 1 GiB"
            ));
        }
        if size == 0 {
            return Err(format!("region {i}: \"size\" is 0"));
        }
        for (name, x) in [(key::BASE, base), (key::SIZE, size), (key::OFFSET, offset)] {
            if x % page_size != 0 {
                return Err(format!(
                    "region {i}: \"{name}\" {x:#x} is not a multiple of the page size {page_size}"
                ));
            }
        }
        if base.checked_add(size).is_none() || offset.checked_add(size).is_none() {
            return Err(format!("region {i}: its end overflows 64 bits"));
        }
        out.push(Mapping {
            base_host_virt_addr: base,
            size,
            offset,
            page_size,
        });
    }
    no_overlap(&out, |m| m.base_host_virt_addr, "the guest's address space")?;
    no_overlap(&out, |m| m.offset, "the memory file")?;
    Ok(out)
}

/// Refuses two regions whose `[start(m), start(m) + size)` overlap, naming both.
fn no_overlap(
    maps: &[Mapping],
    start: impl Fn(&Mapping) -> u64,
    space: &str,
) -> std::result::Result<(), String> {
    let mut order: Vec<usize> = (0..maps.len()).collect();
    order.sort_by_key(|&i| start(&maps[i]));
    for w in order.windows(2) {
        let (a, b) = (&maps[w[0]], &maps[w[1]]);
        if start(a) + a.size > start(b) {
            return Err(format!(
                "regions {} and {} overlap in {space} ([{:#x}, {:#x}) and [{:#x}, {:#x}))",
                w[0],
                w[1],
                start(a),
                start(a) + a.size,
                start(b),
                start(b) + b.size
            ));
        }
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Opens the memory the regions are served from: a hostmem image (v1, found by its
/// magic), whose backend offsets the handshake's offsets then are; or else a raw
/// memory file as Firecracker writes it, each handshake offset a file offset (regions
/// back to back, or with gaps: only what the handshake names is served). A region past
/// the image's backend or the file's end is refused, naming it.
pub fn open_memory(path: &Path, mappings: &[Mapping]) -> Result<Image> {
    let io_err = |what, source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|e| io_err("opening memory file", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io_err("reading the size of memory file", e))?
        .len();
    let mut magic = [0u8; 8];
    let is_image = file_len >= 8 && file.read_exact(&mut magic).is_ok() && magic == MAGIC;
    if is_image {
        let image = Image::open(path)?;
        check_within(mappings, image.header().backend_len, "the image's backend")?;
        return Ok(image);
    }
    check_within(mappings, file_len, "the memory file")?;
    let (layout, end) = raw_layout(mappings);
    let page = mappings
        .iter()
        .map(|m| m.page_size)
        .min()
        .unwrap_or(DEFAULT_PAGE_SIZE);
    Image::open_raw(path, &layout, end, page)
}

/// The raw file's layout for `open_raw`: every handshake region, in file order, each
/// its own image region (so no block straddles two of them), and any gap between them
/// as a region of its own that no fault is served from; backend offsets are file
/// offsets. The backend ends with the last region.
fn raw_layout(mappings: &[Mapping]) -> (Vec<RawRegion>, u64) {
    let mut by_offset: Vec<&Mapping> = mappings.iter().collect();
    by_offset.sort_by_key(|m| m.offset);
    let (mut layout, mut at) = (Vec::new(), 0u64);
    for m in by_offset {
        if m.offset > at {
            layout.push(RawRegion {
                backend_offset: at,
                len: m.offset - at,
            });
        }
        layout.push(RawRegion {
            backend_offset: m.offset,
            len: m.size,
        });
        at = m.offset + m.size;
    }
    (layout, at)
}

/// The handshake's regions as the lazy engine's: the offsets are backend offsets of
/// what [`open_memory`] opened (a raw file's backend offsets are its file offsets).
pub fn lazy_regions(mappings: &[Mapping]) -> Vec<LazyRegion> {
    mappings
        .iter()
        .map(|m| LazyRegion {
            host_addr: m.base_host_virt_addr,
            len: m.size,
            backend_offset: m.offset,
            page_size: m.page_size,
        })
        .collect()
}

/// Serves a received handshake from the memory at `path` ([`open_memory`]) with the
/// lazy engine: faults from the image, zeros for holes and for ranges Firecracker's
/// balloon removed (UFFD_EVENT_REMOVE), the rest filled in the background when
/// `opts.background`. Keep the server running until the VM exits (its end of the
/// socket closes), not only until the fill ends: Firecracker's `madvise(MADV_DONTNEED)`
/// for the balloon waits until its REMOVE event is read, and a removed page's next
/// fault must be answered. A hostmem image's chunk checksums (`FILE.chunks`, written
/// by `save`) are used as [`LazyOptions::chunk_sums`] says, so a fault is served by its
/// page instead of its whole block.
pub fn serve(hs: Handshake, path: &Path, opts: LazyOptions) -> Result<(LazyServer, bool)> {
    let image = open_memory(path, &hs.mappings)?;
    let is_image = image.header().version != 0;
    let server = super::lazy::serve(Arc::new(image), hs.uffd, lazy_regions(&hs.mappings), opts)?;
    Ok((server, is_image))
}

fn check_within(mappings: &[Mapping], len: u64, what: &str) -> Result<()> {
    for (i, m) in mappings.iter().enumerate() {
        let end = m.offset + m.size;
        if end > len {
            return Err(SnapshotError::Mismatch(format!(
                "region {i} ([{:#x}, {end:#x}) of the memory) lies beyond {what}, which has {len} bytes",
                m.offset
            )));
        }
    }
    Ok(())
}

mod vmm;
pub use vmm::{send_handshake, userfaultfd_for, userfaultfd_minor_for};

/// The field names of Firecracker's `GuestRegionUffdMapping`, the handshake's JSON,
/// spelled once for the reader and the sender ([`send_handshake`]). Two of them are
/// also names of backend properties; here they name the handshake's fields.
pub(crate) mod key {
    pub const BASE: &str = "base_host_virt_addr";
    pub const SIZE: &str = "size"; // not a property: the region's length
    pub const OFFSET: &str = "offset"; // not a property: where the region is in the file
    pub const PAGE_SIZE: &str = "page_size";
    /// Bytes, despite the name (Firecracker 1.7 to 1.11 sent only this one).
    pub const PAGE_SIZE_KIB: &str = "page_size_kib";
}

#[cfg(test)]
mod tests;
