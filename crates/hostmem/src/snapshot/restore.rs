//! Copy-mode restore and verification: every data block is read into a buffer and its
//! checksum checked before a byte of it is written to memory.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::format::{BlockAt, BlockKind};
use super::image::Image;
use super::memory::Memory;
use super::{block_checksum, par, place, BlockFault, Result, SnapshotError};
use crate::limits::Snapshot;
use crate::{Backend, HostTopology, Progress};

/// How to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Threads; 0 = one per CPU (at most one per 64 MiB).
    pub threads: usize,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreReport {
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks copied into the memory.
    pub data_blocks: u64,
    /// Bytes copied into the memory.
    pub data_bytes: u64,
    /// Hole blocks whose memory held data and was cleared (a restore into memory
    /// that was in use); holes over never-written memory are not touched.
    pub holes_cleared: u64,
    /// Seconds the copy took.
    pub secs: f64,
}

/// What a verification found (all good: a bad block is an error).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Blocks in the image.
    pub blocks: u64,
    /// Data blocks whose checksum matched.
    pub data_blocks: u64,
    /// Their bytes.
    pub data_bytes: u64,
    /// Blocks without a checksum (a raw file): read, not checked.
    pub unchecked_blocks: u64,
    /// Blocks a diff leaves to its base (not read: verify the base for them).
    pub base_blocks: u64,
}

enum Done {
    Untouched,
    Cleared,
    Data(u64),
}

impl Image {
    fn at(&self, i: u64) -> Result<BlockAt> {
        self.header()
            .block(i)
            .ok_or_else(|| SnapshotError::Mismatch(format!("block {i} is outside the layout")))
    }

    pub(crate) fn block_error(&self, b: &BlockAt, fault: BlockFault) -> SnapshotError {
        SnapshotError::Block {
            index: b.index,
            backend_offset: b.backend_offset,
            page: b.backend_offset / self.header().page_size,
            fault,
        }
    }

    /// Reads block `b` into `buf` and checks it against the table: the bytes come back
    /// only if they are the bytes that were saved.
    pub(crate) fn read_checked<'a>(&self, b: &BlockAt, buf: &'a mut [u8]) -> Result<&'a [u8]> {
        let buf = &mut buf[..b.len as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match self
                .file()
                .read_at(&mut buf[got..], b.file_offset + got as u64)
            {
                Ok(0) => {
                    let fault = BlockFault::ShortRead {
                        want: b.len,
                        got: got as u64,
                    };
                    return Err(self.block_error(b, fault));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.block_error(b, BlockFault::Read(e))),
            }
        }
        if let BlockKind::Data { checksum } = self.blocks()[b.index as usize] {
            let found = block_checksum(buf);
            if found != checksum {
                let fault = BlockFault::Checksum {
                    expected: checksum,
                    found,
                };
                return Err(self.block_error(b, fault));
            }
        }
        Ok(buf)
    }

    /// Reads every data block and checks its checksum; the error names the first bad
    /// block (the lowest index among those read before the threads stopped).
    pub fn verify(&self, threads: usize, progress: &Progress) -> Result<VerifyReport> {
        let h = self.header();
        progress.add_total(h.memory_len());
        let lens = par::run(
            h.blocks,
            par::threads_for(h.memory_len(), threads),
            &[],
            h.buffer_len(),
            progress,
            |i| h.block(i).map_or(0, |b| b.len),
            |i, buf| {
                let b = self.at(i)?;
                if matches!(self.blocks()[i as usize], BlockKind::Hole | BlockKind::Base) {
                    return Ok(None);
                }
                self.read_checked(&b, buf)?;
                Ok(Some(b.len))
            },
        )?;
        let mut r = VerifyReport {
            blocks: h.blocks,
            data_blocks: 0,
            data_bytes: 0,
            unchecked_blocks: 0,
            base_blocks: 0,
        };
        for (kind, len) in self.blocks().iter().zip(lens) {
            match (kind, len) {
                (BlockKind::Data { .. }, Some(n)) => {
                    r.data_blocks += 1;
                    r.data_bytes += n;
                }
                (BlockKind::Unchecked, _) => r.unchecked_blocks += 1,
                (BlockKind::Base, _) => r.base_blocks += 1,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// Copies `image` into `backend`'s memory, which must be as long as the memory the
/// image was saved from. Data blocks are checked before they are written; hole blocks
/// are left alone where the memory holds nothing (so they stay non-resident) and
/// cleared where it does. On error, blocks other threads finished are already written:
/// the memory is then part old, part image, and never holds a bad block's bytes.
pub fn restore(
    image: &Image,
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    restore_from(image, None, backend, opts, progress, None)
}

/// [`restore`], with the base of a diff image for the blocks the diff leaves to it
/// (the caller has checked that `base` is the diff's base), and the limits' figures
/// to check against (None: read now; tests give chosen ones).
pub(crate) fn restore_from(
    image: &Image,
    base: Option<&Image>,
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
    limits: Option<&Snapshot>,
) -> Result<RestoreReport> {
    let h = image.header();
    if h.base.is_some() && base.is_none() {
        return Err(SnapshotError::Mismatch(format!(
            "{} is a diff image: restore it with its base (snapshot::restore_diff)",
            image.path().display()
        )));
    }
    let mem = Memory::new(backend.hold()?).map_err(|source| SnapshotError::Io {
        what: "opening the backend's memory for",
        path: image.path().to_path_buf(),
        source,
    })?;
    if mem.len() != h.backend_len {
        return Err(SnapshotError::Mismatch(format!(
            "the image is of a {}-byte backend; '{}' has {} bytes",
            h.backend_len,
            backend.id(),
            mem.len()
        )));
    }
    // Before any page: the bytes this restore makes resident against the backend's
    // limits, as a preallocation is checked; then threads on its nodes' CPUs.
    let host = HostTopology::read();
    let need = place::bytes_to_fault(image, base, &mem)?;
    match limits {
        Some(snap) => place::check_room(backend, need, snap)?,
        None => place::check_room(
            backend,
            need,
            &Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes),
        )?,
    }
    let cpus = place::cpus_for(backend, &host);
    progress.add_total(h.memory_len());
    let started = Instant::now();
    let done = par::run(
        h.blocks,
        par::threads_for(h.memory_len(), opts.threads),
        &cpus,
        h.buffer_len(),
        progress,
        |i| h.block(i).map_or(0, |b| b.len),
        |i, buf| {
            // A block the diff leaves to its base comes from the base, checked there.
            let source = match (image.blocks()[i as usize], base) {
                (BlockKind::Base, Some(base)) => base,
                _ => image,
            };
            let b = source.at(i)?;
            let write = |e| image.block_error(&b, BlockFault::Write(e));
            if matches!(
                source.blocks()[i as usize],
                BlockKind::Hole | BlockKind::Base
            ) {
                let held = mem
                    .may_hold_data(b.backend_offset, b.len)
                    .map_err(|e| image.block_error(&b, BlockFault::Read(e)))?;
                if !held {
                    return Ok(Done::Untouched);
                }
                mem.clear(b.backend_offset, b.len).map_err(write)?;
                return Ok(Done::Cleared);
            }
            let bytes = source.read_checked(&b, buf)?;
            mem.write(b.backend_offset, bytes).map_err(write)?;
            Ok(Done::Data(b.len))
        },
    )?;
    let mut r = RestoreReport {
        blocks: h.blocks,
        data_blocks: 0,
        data_bytes: 0,
        holes_cleared: 0,
        secs: started.elapsed().as_secs_f64(),
    };
    for d in done {
        match d {
            Done::Untouched => {}
            Done::Cleared => r.holes_cleared += 1,
            Done::Data(n) => {
                r.data_blocks += 1;
                r.data_bytes += n;
            }
        }
    }
    Ok(r)
}
