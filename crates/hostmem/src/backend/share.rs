//! The backend's memory for other processes: whether they can share it, and its fd.
//!
//! A vhost-user back end (or any peer process) maps the guest's memory from an fd the
//! VMM passes over a Unix socket. That only works for memory mapped MAP_SHARED from a
//! file or memfd: with MAP_PRIVATE (`share=off`) the guest's writes go to private
//! copy-on-write pages the peer never sees, and it would read zeros.

use std::os::fd::OwnedFd;

use super::Backend;
use crate::error::{Error, Result};

impl Backend {
    /// Whether another process mapping this backend's fd sees the same bytes: the
    /// memory comes from an fd (memfd, file, shm) and is mapped shared (`share=on`).
    /// Before allocation, what the configuration will give.
    pub fn is_shareable(&self) -> bool {
        match self.region() {
            Ok(r) => r.shared && r.mapped.fd.is_some(),
            Err(_) => self.cfg.common.share && self.kind().has_fd(),
        }
    }

    /// A new descriptor for the backend's memfd or file, and the offset of the memory
    /// in it, for passing to another process (SCM_RIGHTS) or mapping again.
    ///
    /// Unlike a hold ([`Backend::hold`]) it does not mark the backend in use: the
    /// descriptor keeps the file alive, not this process's mapping, and a deleted
    /// backend leaves it valid (a memfd's pages live as long as any descriptor or
    /// mapping of it). Refused for memory without an fd (`memory-backend-ram`) and
    /// before allocation. Whether the peer sees the guest's writes is
    /// [`Backend::is_shareable`].
    pub fn dup_fd(&self) -> Result<(OwnedFd, u64)> {
        let region = self.region()?;
        let (fd, offset) = region.fd_and_offset().ok_or_else(|| Error::NoFd {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
        })?;
        let dup = fd.try_clone().map_err(|e| Error::Io {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
            what: "duplicating its fd".into(),
            reason: crate::sys::strerror(&e),
        })?;
        Ok((dup, offset))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backend, Kind};

    /// Before allocation the answer comes from the configuration, after it from the
    /// mapping; both must agree: shared only with an fd *and* share=on.
    #[test]
    fn shareable_needs_an_fd_and_share_on_before_and_after_allocation() {
        for (kind, share, want) in [
            (Kind::Ram, true, false),
            (Kind::Ram, false, false),
            (Kind::Memfd, true, true),
            (Kind::Memfd, false, false),
        ] {
            let mut b = Backend::builder(kind, "s")
                .size(2 << 20)
                .share(share)
                .build()
                .unwrap();
            assert_eq!(b.is_shareable(), want, "{kind:?} share={share} configured");
            b.complete().unwrap();
            assert_eq!(b.is_shareable(), want, "{kind:?} share={share} allocated");
            assert_eq!(
                b.dup_fd().is_ok(),
                kind == Kind::Memfd,
                "{kind:?}: an fd only where the memory has one"
            );
        }
    }
}
