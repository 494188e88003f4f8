//! The backend's memory for other processes: whether they can share it, and its fd.
//!
//! A vhost-user back end (or any peer process) maps the guest's memory from an fd the
//! VMM passes over a Unix socket. That only works for memory mapped MAP_SHARED from a
//! file or memfd: with MAP_PRIVATE (`share=off`) the guest's writes go to private
//! copy-on-write pages the peer never sees, and it would read zeros.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::hold::NoSafeFd;
use super::Backend;
use crate::error::{Error, Result};
use crate::FileSizePromise;

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
    ///
    /// Whoever holds a descriptor can shrink the file, and this process's mapping would
    /// then raise SIGBUS past the new end. So a memfd is sealed against shrinking first
    /// (with `seal=off` only F_SEAL_SHRINK is added: it can still grow), and the
    /// descriptor of a shm object or a file, which the kernel cannot seal, is refused
    /// ([`Error::FileCanShrink`]) until [`Backend::trust_file_size`]. What a holder can
    /// still do: write the memory, grow the file, punch holes in it (the guest then
    /// reads zeros there) — all without harm to this process.
    pub fn dup_fd(&self) -> Result<(OwnedFd, u64)> {
        let region = self.region()?;
        let (fd, offset) = region.shrink_safe_fd().map_err(|e| self.no_safe_fd(e))?;
        let dup = fd.try_clone_to_owned().map_err(|e| Error::Io {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
            what: "duplicating its fd".into(),
            source: e,
        })?;
        Ok((dup, offset))
    }

    /// Takes the caller's promise that the backend's file will not shrink under its
    /// memory, so that the descriptor of shm and file memory is handed out
    /// ([`Backend::dup_fd`], [`InUse::fd`](crate::InUse::fd), the `FileOffset` of
    /// guest regions that vhost-user back ends map). Memfds need no promise: they are
    /// sealed. Refused before allocation; the promise holds for the life of the memory.
    pub fn trust_file_size(&self, _promise: FileSizePromise) -> Result<()> {
        let region = self.region()?;
        region.size_promised.store(true, Ordering::Release);
        Ok(())
    }

    /// The error for a descriptor [`Region::shrink_safe_fd`](super::hold::Region)
    /// would not give.
    pub(crate) fn no_safe_fd(&self, why: NoSafeFd) -> Error {
        let (kind, id) = (self.kind().qom_type(), self.id.clone());
        match why {
            NoSafeFd::None => Error::NoFd { kind, id },
            NoSafeFd::CanShrink => Error::FileCanShrink { kind, id },
            NoSafeFd::Seal(e) => Error::Io {
                kind,
                id,
                what: "sealing its memfd against shrinking".into(),
                source: e,
            },
        }
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
