//! The caller's promise that makes a shrinkable file's descriptor safe to hand out.
//!
//! Memory mapped from a file raises SIGBUS wherever the file no longer reaches: a
//! `File::set_len(0)` on any descriptor of a guest's shm object, and the next vm-memory
//! write kills the VMM. A memfd is sealed against that (F_SEAL_SHRINK); a shm object or
//! a file cannot be, so hostmem hands out their descriptors (`Backend::dup_fd`,
//! `InUse::fd`, a region's `FileOffset`) only after the caller has made this promise,
//! which only `unsafe` code can make.

/// A promise that a backend's file will not shrink under its mapping. Give it to
/// [`Backend::trust_file_size`](crate::Backend::trust_file_size) to have the descriptor
/// of shm and file memory handed out (memfds are sealed and need none).
#[derive(Debug)]
pub struct FileSizePromise {
    _made_by_unsafe_code: (),
}

impl FileSizePromise {
    /// The promise.
    ///
    /// # Safety
    ///
    /// For as long as any mapping of the backend's memory exists in this process (the
    /// backend, an [`InUse`](crate::InUse) hold, a guest region, a KVM slot), no one
    /// shrinks the file below the end of that memory (`offset + size`): not this
    /// process through a descriptor hostmem handed out, not a peer the descriptor was
    /// sent to, not another process that opens the file by its name. Every access past
    /// a shrunk file's end raises SIGBUS, which kills the process.
    pub unsafe fn new() -> FileSizePromise {
        FileSizePromise {
            _made_by_unsafe_code: (),
        }
    }
}
