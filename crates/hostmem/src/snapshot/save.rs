//! Save: a backend's memory (or ranges of it) to an image, sparse and in parallel: a v1
//! image (a dense table) for a full save, a v2 image (a sparse table) for a diff.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};

use super::format::{
    header_checksum, preamble, BlockAt, BlockKind, Header, MAX_BLOCK_SIZE, PREAMBLE,
};
use super::lazy::{chunks_path, ChunkSums, CHUNK};
use super::memory::Memory;
use super::{is_zero, par, writer, BlockFault, Dirty, Result, SnapshotError};
use crate::{Backend, Progress, PropValue};

/// How to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    /// Bytes per block (a multiple of 4096; [`super::DEFAULT_BLOCK_SIZE`]).
    pub block_size: u64,
    /// Threads; 0 = one per CPU (at most one per 64 MiB).
    pub threads: usize,
    /// fsync the data before the header is written, and the header after: a crash
    /// then never leaves a file that opens as an image with data missing. Off, the
    /// header is still written last, but the page cache decides what reaches the disk.
    pub sync: bool,
    /// Bytes per chunk checksum written beside the image (`FILE.chunks`, a multiple of
    /// 4096 up to the block size; [`CHUNK`]), so a lazy restore serves a first touch by
    /// reading and checking one chunk instead of the whole block; 0: none. Not for a
    /// diff (a lazy restore of a chain serves a block a diff touches whole).
    pub chunk_size: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            block_size: super::DEFAULT_BLOCK_SIZE,
            threads: 0,
            sync: false,
            chunk_size: CHUNK,
        }
    }
}

/// What a save did.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveReport {
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks written as data.
    pub data_blocks: u64,
    /// Bytes written as data.
    pub data_bytes: u64,
    /// Blocks the kernel said were never written: holes, not read.
    pub unread_holes: u64,
    /// Blocks read and found all zero: holes.
    pub zero_holes: u64,
    /// Blocks of a diff with no dirty page: left to the base.
    pub base_blocks: u64,
    /// Seconds the block copy took (not the header).
    pub secs: f64,
}

/// Bytes of a block copied, hashed and written at a time: a quarter of a core's L2
/// cache on current x86 and arm64 cores, so the bounce buffer stays in it from the copy
/// to the write.
const STEP: usize = 256 << 10;

/// Steps in flight per copying thread: enough that the writer always has the next one
/// queued while the copying threads fill more.
const BUFFERS_PER_THREAD: usize = 4;

/// How one block was saved.
enum Saved {
    Base,
    Unread,
    Zero,
    /// The block's checksum and its chunks' (empty without chunk sums).
    Data(u64, Vec<u64>),
}

/// Saves all of `backend`'s memory to a new image at `path` (replaced if it exists).
pub fn save(
    backend: &Backend,
    path: impl AsRef<Path>,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<SaveReport> {
    let len = backend.hold()?.len() as u64;
    save_ranges(backend, &[(0, len)], path, opts, progress)
}

/// Saves `ranges` (offset, length in the backend; whole pages, in the order they are
/// to be stored) of `backend`'s memory to a new image at `path`.
pub fn save_ranges(
    backend: &Backend,
    ranges: &[(u64, u64)],
    path: impl AsRef<Path>,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<SaveReport> {
    save_image(backend, ranges, path.as_ref(), opts, progress, None)
}

/// What a diff is taken against: its base (by header checksum) and the pages written
/// since the base was saved.
pub(crate) struct Since<'a> {
    pub base: u64,
    pub dirty: &'a Dirty<'a>,
}

impl Since<'_> {
    /// Whether the diff holds block `b` (a page of it is dirty): the one test for what
    /// the sparse table lists and what [`save_block`] saves, so the two agree.
    fn holds(&self, b: &BlockAt) -> bool {
        self.dirty.any(b.backend_offset, b.len)
    }
}

/// Saves `ranges`, or for a diff (`since`) only the blocks with a dirty page.
pub(crate) fn save_image(
    backend: &Backend,
    ranges: &[(u64, u64)],
    path: &Path,
    opts: &SaveOptions,
    progress: &Progress,
    since: Option<Since<'_>>,
) -> Result<SaveReport> {
    let io = |what: &'static str| {
        move |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mem = Memory::new(backend.hold()?).map_err(io("opening the backend's memory for"))?;
    let (page, bs) = (mem.page_size(), opts.block_size);
    if bs == 0 || !bs.is_multiple_of(4096) || bs > MAX_BLOCK_SIZE {
        return Err(SnapshotError::Mismatch(format!(
            "block size {bs} is not a multiple of 4096 up to {MAX_BLOCK_SIZE}"
        )));
    }
    let chunk = if since.is_some() { 0 } else { opts.chunk_size };
    if chunk != 0 && (!chunk.is_multiple_of(4096) || chunk > bs) {
        return Err(SnapshotError::Mismatch(format!(
            "chunk size {chunk} is not a multiple of 4096 up to the block size {bs}"
        )));
    }
    for &(off, len) in ranges {
        let whole = off % page == 0 && len % page == 0 && len > 0;
        if !whole || off.checked_add(len).is_none_or(|end| end > mem.len()) {
            return Err(SnapshotError::Mismatch(format!(
                "range {off:#x}+{len:#x} is not whole {page}-byte pages inside the backend's {} bytes",
                mem.len()
            )));
        }
    }
    let mut header = Header::new(
        bs,
        page,
        mem.len(),
        Some(backend.kind().qom_type().to_string()),
        Some(backend.id().to_string()),
        properties(backend),
    );
    header.base = since.as_ref().map(|s| s.base);
    // A diff lists only the blocks with a dirty page (the others are left to the base):
    // counted here, before any block is read, so the regions are placed right after
    // the short table.
    let header = match &since {
        Some(s) => header.plan_sparse(ranges, |b| s.holds(b)),
        None => header.plan(ranges),
    };
    let header =
        header.ok_or_else(|| SnapshotError::Mismatch("the image layout overflows".into()))?;

    // Written under a temporary name beside the image and renamed into place only
    // when whole: a save that fails (a full disk, an unreadable page) leaves an earlier
    // image of that name as it was, and no half-written file behind.
    let partial = partial_path(path).ok_or_else(|| SnapshotError::Io {
        what: "naming image",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
    // The chunk sums likewise, renamed after the image: in between, the image has no
    // sidecar or an older image's, which a lazy restore refuses (another checksum).
    let sidecar = chunks_path(path);
    let partial_sums = partial_path(&sidecar).unwrap_or_else(|| sidecar.clone());
    let written = write_image(&mem, &partial, &header, since.as_ref(), opts, progress).and_then(
        |(saved, secs, checksum)| {
            if chunk != 0 {
                let sums = ChunkSums {
                    chunk,
                    blocks: (0..)
                        .zip(&saved)
                        .filter_map(|(i, s)| match s {
                            Saved::Data(_, sums) => Some((i, sums.clone())),
                            _ => None,
                        })
                        .collect(),
                };
                sums.write(&partial_sums, checksum, header.blocks)
                    .map_err(io("writing the chunk checksums beside"))?;
            }
            std::fs::rename(&partial, path).map_err(io("renaming the finished image to"))?;
            let sums = if chunk != 0 {
                std::fs::rename(&partial_sums, &sidecar)
            } else {
                std::fs::remove_file(&sidecar).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
            };
            sums.map_err(io("placing the chunk checksums beside"))?;
            Ok((saved, secs))
        },
    );
    let (saved, secs) = match written {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&partial_sums);
            return Err(e);
        }
    };
    let block = |i: u64| header.block(i);

    let mut report = SaveReport {
        blocks: header.blocks,
        data_blocks: 0,
        data_bytes: 0,
        unread_holes: 0,
        zero_holes: 0,
        base_blocks: 0,
        secs,
    };
    for (i, s) in saved.iter().enumerate() {
        match s {
            Saved::Unread => report.unread_holes += 1,
            Saved::Zero => report.zero_holes += 1,
            Saved::Base => report.base_blocks += 1,
            Saved::Data(..) => {
                report.data_blocks += 1;
                report.data_bytes += block(i as u64).map_or(0, |b| b.len);
            }
        }
    }
    Ok(report)
}

/// `DIR/.NAME.partial-PID`: the name a save writes under before the rename.
fn partial_path(path: &Path) -> Option<std::path::PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.partial-{}", std::process::id())))
}

/// Writes the whole image to `path`: blocks in parallel, then the header and table.
/// Returns how each block was saved, the seconds the block copy took and the header
/// checksum.
fn write_image(
    mem: &Memory,
    path: &Path,
    header: &Header,
    since: Option<&Since<'_>>,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<(Vec<Saved>, f64, u64)> {
    let io = |what: &'static str| {
        move |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("creating image"))?;
    // The whole length at once: blocks never written stay holes of the file.
    file.set_len(header.file_len())
        .map_err(io("sizing image"))?;
    progress.add_total(header.memory_len());

    let chunk = if since.is_some() { 0 } else { opts.chunk_size };
    let step = step_len(chunk).min(header.buffer_len().max(1));
    let started = Instant::now();
    let block = |i: u64| header.block(i);
    let threads = par::threads_for(header.memory_len(), opts.threads);
    let (saved, failed) = writer::write_with(&file, BUFFERS_PER_THREAD * threads, step, |q| {
        par::run(
            header.blocks,
            threads,
            &[],
            0,
            progress,
            |i| block(i).map_or(0, |b| b.len),
            |i, _| save_block(mem, q, header, since, chunk, step, i),
        )
    })
    .map_err(io("starting the writer thread for"))?;
    // A failed write is the cause; the copying threads' errors after it only say
    // that the writer stopped.
    if let Some((i, e)) = failed {
        let at = block(i).map_or(0, |b| b.backend_offset);
        return Err(SnapshotError::Block {
            image: None,
            index: i,
            backend_offset: at,
            page: at / header.page_size,
            fault: BlockFault::Write(e),
        });
    }
    let saved = saved?;
    let secs = started.elapsed().as_secs_f64();

    let table: Vec<BlockKind> = saved
        .iter()
        .map(|s| match *s {
            Saved::Data(checksum, _) => BlockKind::Data { checksum },
            Saved::Base => BlockKind::Base,
            Saved::Unread | Saved::Zero => BlockKind::Hole,
        })
        .collect();
    let checksum =
        write_header(&file, header, &table, opts.sync).map_err(io("writing image header"))?;
    Ok((saved, secs, checksum))
}

/// Bytes copied, hashed and written at a time for chunk sums of `chunk` bytes (0:
/// none): [`STEP`], or the nearest whole number of chunks to it.
fn step_len(chunk: u64) -> usize {
    match chunk {
        0 => STEP,
        c => (c as usize) * (STEP / c as usize).max(1),
    }
}

fn save_block(
    mem: &Memory,
    queue: &writer::Queue<'_>,
    header: &Header,
    since: Option<&Since<'_>>,
    chunk: u64,
    step: usize,
    i: u64,
) -> Result<Saved> {
    let b = header
        .block(i)
        .ok_or_else(|| SnapshotError::Mismatch(format!("block {i} is outside the layout")))?;
    if since.is_some_and(|s| !s.holds(&b)) {
        return Ok(Saved::Base);
    }
    let fault = |fault| SnapshotError::Block {
        image: None,
        index: i,
        backend_offset: b.backend_offset,
        page: b.backend_offset / header.page_size,
        fault,
    };
    if !mem
        .may_hold_data(b.backend_offset, b.len)
        .map_err(|e| fault(BlockFault::Read(e)))?
    {
        return Ok(Saved::Unread);
    }
    let stopped = || {
        fault(BlockFault::Write(std::io::Error::other(
            "the image's writer thread has stopped",
        )))
    };
    // Copied, checked and hashed a step at a time, while the step is in the core's
    // cache, then handed to the writer: the memory is read from RAM once, as a plain
    // write of it would. A step that is all zeros is not written: it stays a hole of
    // the file (which reads as zeros); a block with no other step is a hole in the
    // table.
    let mut sum = super::Checksum::new();
    let mut chunks = Vec::new();
    let mut data = false;
    let mut done = 0;
    while done < b.len as usize {
        let mut buf = queue.buffer().ok_or_else(stopped)?;
        let len = step.min(b.len as usize - done).min(buf.len());
        let part = &mut buf[..len];
        if let Err(e) = mem.read(b.backend_offset + done as u64, part) {
            queue.give_back(buf);
            return Err(fault(BlockFault::Read(e)));
        }
        sum.update(part);
        if chunk != 0 {
            chunks.extend(super::lazy::sums_of(part, chunk));
        }
        if is_zero(part) {
            queue.give_back(buf);
        } else {
            if !queue.write(i, b.file_offset + done as u64, buf, len) {
                return Err(stopped());
            }
            data = true;
        }
        done += len;
    }
    if !data {
        return Ok(Saved::Zero);
    }
    Ok(Saved::Data(sum.digest(), chunks))
}

/// Header and table, then the preamble that makes the file an image: last, so an
/// interrupted save leaves a file `Image::open` refuses. Returns the header checksum.
fn write_header(file: &File, h: &Header, table: &[BlockKind], sync: bool) -> std::io::Result<u64> {
    let json = h.to_json_bytes();
    let table = super::table::encode(h.version, table);
    // The layout made room for `h.entries`: a table of another length would overlap
    // the data or hash differently from what the header says.
    if table.len() as u64 != h.table_len() {
        return Err(std::io::Error::other(format!(
            "the block table is {} bytes; the header planned {}",
            table.len(),
            h.table_len()
        )));
    }
    file.write_all_at(&json, PREAMBLE)?;
    file.write_all_at(&table, h.table_offset)?;
    if sync {
        file.sync_all()?;
    }
    file.write_all_at(&preamble(h.version, &json, &table), 0)?;
    if sync {
        file.sync_all()?;
    }
    Ok(header_checksum(&json, &table))
}

/// The backend's properties as JSON: booleans and numbers as such, the rest in their
/// `-object` text.
fn properties(b: &Backend) -> Map<String, Value> {
    b.properties()
        .filter_map(|p| {
            let v = match b.get(p.name).ok()? {
                PropValue::Bool(v) => Value::Bool(v),
                PropValue::Int(v) => Value::from(v),
                other => Value::String(other.to_string()),
            };
            Some((p.name.to_string(), v))
        })
        .collect()
}
