//! File descriptors: memfd and its seals, POSIX shared memory, hole punching, statfs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check, last_err, memfd};

/// `memfd_create(2)`.
pub(crate) fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid C string; on success we own the returned descriptor.
    let fd = check(unsafe { libc::memfd_create(c.as_ptr(), flags) })?;
    // SAFETY: fd is a fresh descriptor no one else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds file seals (`F_ADD_SEALS`).
pub(crate) fn add_seals(fd: impl AsFd, seals: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor that is open for the call (borrowed), integer
    // argument.
    check(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), memfd::F_ADD_SEALS, seals) })?;
    Ok(())
}

/// Punches a hole (discard data, keep size): `fallocate(PUNCH_HOLE|KEEP_SIZE)`.
pub(crate) fn punch_hole(fd: &OwnedFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory passed.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// What statfs says about a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsInfo {
    pub magic: i64,
    pub block_size: u64,
    /// Bytes an unprivileged writer could still use.
    pub avail_bytes: u64,
}

/// statfs(2) of the file system holding `path`.
pub(crate) fn statfs(path: &Path) -> io::Result<FsInfo> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid path string; statfs is plain data filled by the kernel and
    // read only on success.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        check(libc::statfs(c.as_ptr(), &mut s))?;
        Ok(FsInfo {
            magic: s.f_type as i64,
            block_size: s.f_bsize as u64,
            avail_bytes: (s.f_bavail as u64).saturating_mul(s.f_bsize as u64),
        })
    }
}

/// A POSIX shared memory object (`shm_open`) that no other process can open: created
/// with mode 0 under a fresh name and unlinked at once, as QEMU's `memory-backend-shm`
/// does, so it lives exactly as long as its descriptor and mappings.
pub(crate) fn shm_create_unlinked() -> io::Result<OwnedFd> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let name = format!(
            "/hostmem-{}-shm-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: c is a valid C string; on success we own the returned descriptor.
        let fd = unsafe {
            libc::shm_open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0 as libc::mode_t,
            )
        };
        if fd < 0 {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: fd is a fresh descriptor no one else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: c is the valid name just created; unlinking touches no memory of ours.
        check(unsafe { libc::shm_unlink(c.as_ptr()) })?;
        return Ok(owned);
    }
}
