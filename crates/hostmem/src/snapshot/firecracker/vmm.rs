//! The VMM's side of the handshake, as Firecracker does it, for a Rust VMM whose
//! guest memory is hostmem backends and whose faults `hostmem uffd-handler` serves in
//! another process.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde_json::Value;

use super::{key, Mapping};
use crate::sys::scm;
use crate::sys::uffd::{feature, mode, Uffd};
use crate::InUse;

/// A userfaultfd made as Firecracker makes it (`UFFD_FEATURE_EVENT_REMOVE` required,
/// non-blocking, close-on-exec, kernel faults included) with each of `memory` registered
/// whole in MISSING mode: from now on a touch of a page not yet present waits until the
/// handler the fd is sent to serves it. Taking [`InUse`] holds is what keeps the
/// registration to memory hostmem owns (never memory Rust objects live in); keep them
/// for as long as the VM runs.
pub fn userfaultfd_for(memory: &[&InUse]) -> io::Result<OwnedFd> {
    firecracker_uffd(memory, false)
}

/// As [`userfaultfd_for`], with each of `memory` registered in MINOR mode as well (as
/// Firecracker registers guest memory on hugetlbfs): a touch of a page the memory's
/// page cache already holds (the VMM, or an earlier run, put it there) is a minor fault
/// the handler answers with UFFDIO_CONTINUE — the page mapped as it is, nothing read
/// from the image — while a page the page cache lacks is a missing fault served from
/// the image as before. For shared shmem (memfd, shm) and hugetlbfs memory only: the
/// kernel refuses MINOR mode on anything else, and this says so.
pub fn userfaultfd_minor_for(memory: &[&InUse]) -> io::Result<OwnedFd> {
    firecracker_uffd(memory, true)
}

/// The userfaultfd of [`userfaultfd_for`], each of `memory` registered MISSING, and
/// MINOR as well with `minor`.
fn firecracker_uffd(memory: &[&InUse], minor: bool) -> io::Result<OwnedFd> {
    let minor_features = feature::MINOR_SHMEM | feature::MINOR_HUGETLBFS;
    let wanted = feature::EVENT_REMOVE | if minor { minor_features } else { 0 };
    let (uffd, features) = Uffd::new(wanted)?;
    if features & feature::EVENT_REMOVE == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's userfaultfd has no UFFD_FEATURE_EVENT_REMOVE, which Firecracker requires",
        ));
    }
    for m in memory {
        let modes = if minor {
            servable_by_minor_faults(m, features)?;
            mode::MISSING | mode::MINOR
        } else {
            mode::MISSING
        };
        uffd.register(&m.0.mapped.map, 0, m.len(), modes)?;
    }
    uffd.as_fd().try_clone_to_owned()
}

/// Refuses, with a message, memory whose page cache this kernel's userfaultfd (with
/// `features`) cannot map on a minor fault.
fn servable_by_minor_faults(m: &InUse, features: u64) -> io::Result<()> {
    let needed = if m.page_size() > 4096 {
        feature::MINOR_HUGETLBFS
    } else {
        feature::MINOR_SHMEM
    };
    let why = if !m.is_shared() || m.fd().is_none() {
        "not shared memory with a file behind it"
    } else if features & needed == 0 {
        "of a kind this kernel cannot serve by minor faults"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "minor faults serve shared shmem or hugetlbfs memory whose page cache this \
             kernel's userfaultfd maps (UFFD_FEATURE_MINOR_*); the memory at {:#x} is {why}",
            m.host_addr()
        ),
    ))
}

/// The VMM's side, as Firecracker's `send_uffd_handshake` does it: the regions as its
/// JSON body (`page_size` and `page_size_kib`, both bytes) and `uffd` as SCM_RIGHTS in
/// one `sendmsg` (the rest of a long body follows as plain bytes). For a Rust VMM on
/// hostmem that hands its guest memory to `hostmem uffd-handler` in another process.
/// Like Firecracker, keep `stream` and `uffd` open afterwards: the handler reads no EOF,
/// and the VMM's own copy of the uffd keeps the guest waiting (not reading zeros) if the
/// handler dies.
pub fn send_handshake(
    stream: &UnixStream,
    mappings: &[Mapping],
    uffd: BorrowedFd<'_>,
) -> io::Result<()> {
    let body: Vec<Value> = mappings
        .iter()
        .map(|m| {
            let fields = [
                (key::BASE, m.base_host_virt_addr),
                (key::SIZE, m.size),
                (key::OFFSET, m.offset),
                (key::PAGE_SIZE, m.page_size),
                (key::PAGE_SIZE_KIB, m.page_size),
            ];
            Value::Object(fields.iter().map(|&(k, v)| (k.into(), v.into())).collect())
        })
        .collect();
    let body = Value::Array(body).to_string();
    let sent = scm::send_with_fds(stream, body.as_bytes(), &[uffd])?;
    io::Write::write_all(&mut &*stream, &body.as_bytes()[sent..])
}
