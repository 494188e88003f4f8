//! A record that an image was verified whole, kept beside it (`FILE.verified`), so the
//! clones a fleet starts from one image pay for reading every block once, not once each.
//!
//! The stamp names the file as the kernel describes it when the verification started
//! and ended (the same both times, or nothing is recorded): the image's header checksum,
//! device and inode, size, and mtime and ctime in nanoseconds. Any write to the file
//! moves its ctime, even one that sets the mtime back afterwards (`utimensat` is itself
//! a change of the inode), and replacing the file changes its inode: either way the
//! stamp no longer matches and the next restore verifies again.
//!
//! Why a file beside the image and not a user xattr on it: setting an xattr is a change
//! of the inode too, so it moves the very ctime the stamp holds, and a stamp stored on
//! the file could never match the file it is on. Where the stamp cannot be written (a
//! read-only directory), nothing is recorded and every restore verifies.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::image::Image;
use super::restore::VerifyReport;
use super::{Result, SnapshotError};
use crate::Progress;

/// First word of a stamp file, with its version.
const MAGIC: &str = "hostmem-verified-v1";

/// The file as the kernel describes it, with the header checksum it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    header: u64,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// The open image's file now (fstat of the descriptor the restore reads).
    fn of(image: &Image) -> io::Result<Stamp> {
        let m = image.file().metadata()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Stamp {
            header: image.checksum(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    fn text(&self) -> String {
        format!(
            "{MAGIC} header={:016x} dev={} ino={} size={} mtime_ns={} ctime_ns={}\n",
            self.header, self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// Where the stamp of the image at `image` is kept: `FILE.verified`.
pub fn stamp_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".verified");
    PathBuf::from(p)
}

/// What became of the stamp after a full verification.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stamped {
    /// Written: later restores with [`Verify::Once`](super::Verify::Once) skip the
    /// check while the file stays as it is.
    Recorded(PathBuf),
    /// The file changed while it was read: nothing recorded (the next restore verifies).
    Changed,
    /// The stamp could not be written (e.g. a read-only directory): every restore
    /// verifies.
    NotWritten(PathBuf, io::Error),
}

/// Whether the stamp beside `image` records this very file as verified: false when
/// there is none, it cannot be read, or anything in it differs from the file now.
pub fn is_stamped(image: &Image) -> bool {
    let Ok(now) = Stamp::of(image) else {
        return false;
    };
    std::fs::read_to_string(stamp_path(image.path())).is_ok_and(|t| t == now.text())
}

/// Verifies every block of `image` (as [`Image::verify`]) and, when all match and the
/// file was the same before and after, records the stamp that lets later restores skip
/// the check. An image with a bad block is an error, and an older stamp is removed.
pub fn verify_and_stamp(
    image: &Image,
    threads: usize,
    progress: &Progress,
) -> Result<(VerifyReport, Stamped)> {
    let path = stamp_path(image.path());
    let before = Stamp::of(image).map_err(|source| SnapshotError::Io {
        what: "reading the status of",
        path: image.path().to_path_buf(),
        source,
    })?;
    let report = match image.verify(threads, progress) {
        Ok(r) => r,
        Err(e) => {
            // A stale stamp could not match this file anyway; removing it says so.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    if Stamp::of(image).ok().as_ref() != Some(&before) {
        return Ok((report, Stamped::Changed));
    }
    let stamped = match write(&path, &before.text()) {
        Ok(()) => Stamped::Recorded(path),
        Err(e) => Stamped::NotWritten(path, e),
    };
    Ok((report, stamped))
}

/// Writes `text` to `path` through a temporary file renamed over it, so a reader sees
/// the old stamp or the new one, never half of one.
fn write(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
