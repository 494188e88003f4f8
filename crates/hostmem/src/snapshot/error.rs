//! What can go wrong saving, reading or restoring an image, said with the block, the
//! backend offset and page it covers, and the cause.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why one block failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BlockFault {
    /// The bytes read from the image do not hash to the table's checksum.
    Checksum {
        /// What the block table says.
        expected: u64,
        /// What the bytes read hash to.
        found: u64,
    },
    /// The image ends inside the block (a truncated file).
    ShortRead {
        /// Bytes the block has.
        want: u64,
        /// Bytes the image had for it.
        got: u64,
    },
    /// Reading the block (from the image or from the memory) failed.
    Read(io::Error),
    /// Writing the block (into the image or into the memory) failed.
    Write(io::Error),
}

impl fmt::Display for BlockFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockFault::Checksum { expected, found } => write!(
                f,
                "checksum mismatch: the block table says xxh3 {expected:#018x}, the bytes hash to {found:#018x}"
            ),
            BlockFault::ShortRead { want, got } => write!(
                f,
                "short read: the image ends inside the block ({got} of {want} bytes)"
            ),
            BlockFault::Read(e) => write!(f, "read failed: {e}"),
            BlockFault::Write(e) => write!(f, "write failed: {e}"),
        }
    }
}

/// An error from [`crate::snapshot`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A system call on the image file failed outside any block.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The image file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not an image this hostmem reads, or its header is damaged.
    #[error("{path}: {reason}")]
    Format {
        /// The image file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// One block failed; blocks other threads had finished may already be written.
    #[error(
        "{}block {index} (backend offset {backend_offset:#x}, page {page}): {fault}",
        in_file(.image)
    )]
    Block {
        /// The image file the block is in, when the restore reads more than one (a
        /// chain of a full image and its diffs: the block may be any one's); None when
        /// there is one image, which the caller named.
        image: Option<PathBuf>,
        /// Index in the block table.
        index: u64,
        /// Offset of the block's first byte in the backend.
        backend_offset: u64,
        /// The block's first page in the backend (offset / page size).
        page: u64,
        /// The cause.
        fault: BlockFault,
    },
    /// The image does not fit the backend or the ranges asked for.
    #[error("{0}")]
    Mismatch(String),
    /// The backend refused (not allocated).
    #[error(transparent)]
    Backend(#[from] crate::Error),
    /// [`Progress::cancel`](crate::Progress::cancel) was called.
    #[error("cancelled")]
    Cancelled,
}

/// "FILE: " before a block error that names its image.
fn in_file(image: &Option<PathBuf>) -> String {
    image
        .as_ref()
        .map_or_else(String::new, |p| format!("{}: ", p.display()))
}

impl SnapshotError {
    /// A [`SnapshotError::Block`] error named as a block of the image at `path` (a
    /// chain's errors say which image failed); any other error as it is.
    pub(crate) fn in_image(self, path: &std::path::Path) -> SnapshotError {
        match self {
            SnapshotError::Block {
                index,
                backend_offset,
                page,
                fault,
                ..
            } => SnapshotError::Block {
                image: Some(path.to_path_buf()),
                index,
                backend_offset,
                page,
                fault,
            },
            other => other,
        }
    }

    /// The block index of a [`SnapshotError::Block`] error.
    pub fn block(&self) -> Option<u64> {
        match self {
            SnapshotError::Block { index, .. } => Some(*index),
            _ => None,
        }
    }
}
