//! Copy-mode restore and verification. A restore reads every data block straight into
//! the memory (one kernel copy, as a plain `read(2)` into it makes) and checks it there;
//! a block that fails is cleared again before the error. Nobody uses the memory while a
//! copy restore runs (the VMM restores before its vCPUs run), so the bad bytes are never
//! seen; docs/snapshot.md says what the memory holds after a failure.

use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::Instant;

use super::chain::{self, Piece, Source};
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

/// Bytes of a block read into memory between two looks at them: small enough that the
/// piece just written is still in the core's cache (512 KiB of L2 here) when it is
/// hashed, large enough that the `pread` per piece costs nothing measurable.
const PIECE: usize = 128 << 10;

/// Bytes of one unit written with data and cleared (holes over memory that held some).
#[derive(Default)]
struct Done {
    data: u64,
    cleared: u64,
}

impl Image {
    fn at(&self, i: u64) -> Result<BlockAt> {
        self.header()
            .block(i)
            .ok_or_else(|| SnapshotError::Mismatch(format!("block {i} is outside the layout")))
    }

    pub(crate) fn block_error(&self, b: &BlockAt, fault: BlockFault) -> SnapshotError {
        SnapshotError::Block {
            image: None,
            index: b.index,
            backend_offset: b.backend_offset,
            page: b.backend_offset / self.header().page_size,
            fault,
        }
    }

    /// Reads block `b` into `buf` and checks it against the table: the bytes come back
    /// only if they are the bytes that were saved.
    pub(crate) fn read_checked<'a>(&self, b: &BlockAt, buf: &'a mut [u8]) -> Result<&'a [u8]> {
        self.read_checked_by(b, buf, usize::MAX)
    }

    /// [`Self::read_checked`] with at most `piece` bytes per `pread`: a lazy restore's
    /// fill reads in pieces so that its thread, which the kernel does not preempt inside
    /// a read, gives its CPU up often to a faulting thread woken there.
    pub(crate) fn read_checked_by<'a>(
        &self,
        b: &BlockAt,
        buf: &'a mut [u8],
        piece: usize,
    ) -> Result<&'a [u8]> {
        let buf = &mut buf[..b.len as usize];
        let mut got = 0usize;
        while got < buf.len() {
            let end = buf.len().min(got.saturating_add(piece.max(4096)));
            match self
                .file()
                .read_at(&mut buf[got..end], b.file_offset + got as u64)
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

    /// Reads block `b` straight into `mem` and checks it there, hashing each piece
    /// as it lands (`buf`, a piece long, holds the copy hashed while it is in cache).
    /// A block that does not arrive whole or does not hash to the table's checksum is
    /// cleared again (it reads as zeros, its pages freed where the kernel can) before
    /// the error naming it is returned: the memory never keeps a bad block's bytes.
    fn read_into(&self, b: &BlockAt, mem: &Memory, buf: &mut [u8]) -> Result<()> {
        let expected = match self.blocks()[b.index as usize] {
            BlockKind::Data { checksum } => Some(checksum),
            _ => None,
        };
        let scratch = if expected.is_some() { buf } else { &mut [][..] };
        let mut hasher = super::Checksum::new();
        let read = mem.read_from(
            b.backend_offset,
            b.len,
            self.file(),
            b.file_offset,
            scratch,
            |piece| hasher.update(piece),
        );
        let fault = match read {
            Err(e) => BlockFault::Read(e),
            Ok(got) if got < b.len => BlockFault::ShortRead { want: b.len, got },
            Ok(_) => match expected {
                Some(expected) if hasher.digest() != expected => BlockFault::Checksum {
                    expected,
                    found: hasher.digest(),
                },
                _ => return Ok(()),
            },
        };
        // A failed clear leaves the block as read; the error still names the block,
        // and docs/snapshot.md says the memory is not to be used after a failure.
        let _ = mem.clear(b.backend_offset, b.len);
        Err(self.block_error(b, fault))
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
/// image was saved from. Data blocks are read into the memory and checked there, a bad
/// one cleared again; hole blocks are left alone where the memory holds nothing (so they
/// stay non-resident) and cleared where it does. On error, blocks other threads finished
/// are already written: the memory is then part old, part image, the failed block
/// zeros, and never holds a bad block's bytes. Nothing else may use the memory meanwhile.
pub fn restore(
    image: &Image,
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    restore_from(image, &[], backend, opts, progress, None)
}

/// [`restore`], with the older images of a diff's chain (oldest first: the full base,
/// then the diffs before `image`) for the blocks `image` leaves to them (the caller has
/// checked the chain's links), and the limits' figures to check against (None: read
/// now; tests give chosen ones).
///
/// The work is shared out by the oldest image's blocks (the largest: block sizes never
/// grow along a chain), each split into pieces by source ([`chain::pieces`]): a source
/// block is read and checked once per unit, however many small blocks of a newer diff
/// leave their bytes to it, and each piece is written from that buffer.
pub(crate) fn restore_from(
    image: &Image,
    older: &[&Image],
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
    limits: Option<&Snapshot>,
) -> Result<RestoreReport> {
    let h = image.header();
    if h.base.is_some() && older.is_empty() {
        return Err(SnapshotError::Mismatch(format!(
            "{} is a diff image: restore it with its base (snapshot::restore_diff, restore_chain)",
            image.path().display()
        )));
    }
    let chain: Vec<&Image> = older.iter().copied().chain([image]).collect();
    let oldest = chain[0].header();
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
    // limits, as a preallocation is checked, and watched unit by unit while it runs;
    // then threads on its nodes' CPUs.
    let host = HostTopology::read();
    let resident = place::resident(&chain, &mem, true)?;
    let snap = match limits {
        Some(snap) => snap.clone(),
        None => Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes),
    };
    let guard = place::watch_room(backend, resident.need, snap)?;
    // The first refusal names the limit; blocks other threads were refused after it
    // only say the restore is stopping, so the error reported is this one.
    let stopped: Mutex<Option<SnapshotError>> = Mutex::new(None);
    let cpus = place::cpus_for(backend, &host);
    // One buffer per image of the chain, each its largest block, cut from the thread's.
    let buf_lens: Vec<usize> = chain.iter().map(|im| im.header().buffer_len()).collect();
    progress.add_total(h.memory_len());
    let started = Instant::now();
    let done = par::run(
        oldest.blocks,
        par::threads_for(h.memory_len(), opts.threads),
        &cpus,
        // A lone image's blocks are read straight into the memory through a piece-long
        // buffer; a chain's mixed units need one buffer per image, each its largest block.
        if chain.len() == 1 {
            h.buffer_len().min(PIECE)
        } else {
            buf_lens.iter().sum::<usize>().max(PIECE)
        },
        progress,
        |i| oldest.block(i).map_or(0, |b| b.len),
        |i, buf| {
            let unit = chain[0].at(i)?;
            let pieces = chain::pieces(&chain, &unit)?;
            let held = resident.held.get(i as usize).copied().unwrap_or(true);
            // Only a unit over memory that holds nothing yet takes room, the pages its
            // data pieces touch, as `resident` counted it.
            let room = match held {
                true => 0,
                false => chain::data_pages(&pieces, mem.page_size()),
            };
            if room > 0 {
                if let Err(edge) = guard.grant(room) {
                    if let Some(e) = edge.and_then(|edge| guard.edge_error(backend, &edge)) {
                        *stopped.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(SnapshotError::Backend(e));
                    }
                    return Err(SnapshotError::Cancelled);
                }
            }
            let written = match pieces.as_slice() {
                // The whole unit is one block of one image: read straight into the
                // memory and checked there.
                [Piece {
                    from: Source::Data { image: k, block },
                    len,
                    ..
                }] if *len == block.len => {
                    let piece = PIECE.min(buf.len());
                    chain[*k]
                        .read_into(block, &mem, &mut buf[..piece])
                        .map(|()| Done {
                            data: *len,
                            cleared: 0,
                        })
                        .map_err(|e| chain::named(chain.len(), chain[*k], e))
                }
                _ => write_unit(&chain, &pieces, &mem, held, &mut split(buf, &buf_lens)),
            };
            if room > 0 {
                guard.finish(room);
            }
            written
        },
    );
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            return Err(stopped
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(e))
        }
    };
    // Counted in the newest image's blocks: a piece is whole blocks of it.
    let bs = h.block_size;
    let mut r = RestoreReport {
        blocks: h.blocks,
        data_blocks: 0,
        data_bytes: 0,
        holes_cleared: 0,
        secs: started.elapsed().as_secs_f64(),
    };
    for d in done {
        r.data_blocks += d.data.div_ceil(bs);
        r.data_bytes += d.data;
        r.holes_cleared += d.cleared.div_ceil(bs);
    }
    Ok(r)
}

/// Writes one unit's pieces into the memory: data from the chain's images (each source
/// block read into its image's buffer and checked once), holes cleared where the memory
/// holds something.
fn write_unit(
    chain: &[&Image],
    pieces: &[Piece],
    mem: &Memory,
    held: bool,
    bufs: &mut [&mut [u8]],
) -> Result<Done> {
    let mut done = Done::default();
    // Holes first, and only where the unit's memory may hold data: asked before a data
    // piece of the unit faults its page in (a 4 KiB piece faults a whole huge page, and
    // the hole beside it then needs no clearing).
    for p in pieces.iter().filter(|p| held && p.from == Source::Hole) {
        let fault = |f| chain::fault_at(chain, p.backend_offset, f);
        if mem
            .may_hold_data(p.backend_offset, p.len)
            .map_err(|e| fault(BlockFault::Read(e)))?
        {
            mem.clear(p.backend_offset, p.len)
                .map_err(|e| fault(BlockFault::Write(e)))?;
            done.cleared += p.len;
        }
    }
    // The block each image's buffer holds, read and checked.
    let mut loaded: Vec<Option<u64>> = vec![None; chain.len()];
    for p in pieces {
        let fault = |f| chain::fault_at(chain, p.backend_offset, f);
        let Source::Data { image: k, block: b } = p.from else {
            continue;
        };
        if loaded[k] != Some(b.index) {
            chain[k]
                .read_checked(&b, &mut bufs[k][..])
                .map_err(|e| chain::named(chain.len(), chain[k], e))?;
            loaded[k] = Some(b.index);
        }
        let within = (p.backend_offset - b.backend_offset) as usize;
        let bytes = &bufs[k][within..within + p.len as usize];
        mem.write(p.backend_offset, bytes)
            .map_err(|e| fault(BlockFault::Write(e)))?;
        done.data += p.len;
    }
    Ok(done)
}

/// `buf` cut into consecutive slices of `lens`.
pub(crate) fn split<'a>(mut buf: &'a mut [u8], lens: &[usize]) -> Vec<&'a mut [u8]> {
    let mut out = Vec::with_capacity(lens.len());
    for &n in lens {
        let n = n.min(buf.len());
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
        out.push(head);
        buf = rest;
    }
    out
}
