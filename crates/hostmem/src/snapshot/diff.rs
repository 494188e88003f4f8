//! Diff images: only the blocks with a page written since a base image was saved, the
//! rest left to the base (block kind `Base`), named by the base's header checksum.
//! Written as format v2: the table lists only the blocks the diff holds (24 bytes each),
//! so a diff of N pages costs N pages and a few bytes each, not 16 bytes for every
//! block of the memory.
//!
//! The dirty pages come from the caller — KVM's dirty log, a vm-memory `AtomicBitmap`
//! — because only the VMM knows what its guest wrote; the kernel's soft-dirty bits are
//! not available for shared memory.

use std::path::Path;

use super::format::BlockKind;
use super::image::Image;
use super::restore::{restore_from, RestoreOptions, RestoreReport};
use super::save::{save_image, SaveOptions, SaveReport, Since};
use super::{Result, SnapshotError};
use crate::{Backend, Progress};

/// Pages written since the base was saved: bit `i % 64` of word `i / 64` is page `i` of
/// the backend, pages of `page_size` bytes (KVM's dirty log and vm-memory's bitmaps
/// count 4 KiB pages). Pages past the end of `bits` count as dirty.
#[derive(Debug, Clone, Copy)]
pub struct Dirty<'a> {
    /// Bytes per bit (a power of two; 4096 for KVM's log).
    pub page_size: u64,
    /// The bitmap.
    pub bits: &'a [u64],
}

impl Dirty<'_> {
    /// Whether any page of `[offset, offset+len)` is dirty.
    pub fn any(&self, offset: u64, len: u64) -> bool {
        if self.page_size == 0 || len == 0 {
            return len != 0;
        }
        let first = offset / self.page_size;
        let last = (offset + (len - 1)) / self.page_size;
        (first..=last).any(|p| {
            self.bits
                .get((p / 64) as usize)
                .is_none_or(|w| w & (1 << (p % 64)) != 0)
        })
    }
}

/// Saves a diff of `backend` against `base`: the blocks with a dirty page are saved as
/// [`save`](super::save) would (data, or a hole if all zero), every other block is
/// left to the base. The base is a full image or itself a diff (a chain: each diff
/// holds what was written since the image before it, restored with
/// [`restore_chain`]); it must be of memory as long as the backend's, and the diff has
/// its regions. Not a raw file: it has no checksum to be named by.
///
/// The diff's blocks are [`diff_block_size`]: as small as the dirty bitmap allows, so
/// N written pages cost N pages of file, not N of the base's (2 MiB) blocks.
/// [`save_diff_with`] chooses another size.
pub fn save_diff(
    backend: &Backend,
    base: &Image,
    dirty: &Dirty<'_>,
    path: impl AsRef<Path>,
    progress: &Progress,
) -> Result<SaveReport> {
    let opts = SaveOptions {
        block_size: diff_block_size(dirty.page_size, base.header().block_size),
        ..SaveOptions::default()
    };
    save_diff_with(backend, base, dirty, path, &opts, progress)
}

/// The block size [`save_diff`] gives a diff: the dirty bitmap's page (at least 4 KiB),
/// the finest block that can be dirty alone — 4 KiB for KVM's dirty log, on 4 KiB and
/// on huge page memory alike (a diff's blocks need not be whole pages of the memory: a
/// diff is restored by copy only). The base's block size instead when the bitmap's page
/// does not divide it (a diff's block lies inside one of its base's).
pub fn diff_block_size(dirty_page: u64, base_block: u64) -> u64 {
    let want = dirty_page.max(4096);
    if want <= base_block && base_block.is_multiple_of(want) && want.is_multiple_of(4096) {
        want
    } else {
        base_block
    }
}

/// [`save_diff`] with `opts.block_size` as the diff's block size (a multiple of 4096
/// dividing the base's), its threads and sync; chunk sums are never written for a diff.
/// A diff with the base's block size is what hostmem wrote before diffs had their own.
pub fn save_diff_with(
    backend: &Backend,
    base: &Image,
    dirty: &Dirty<'_>,
    path: impl AsRef<Path>,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<SaveReport> {
    let h = base.header();
    if h.version == 0 {
        return Err(SnapshotError::Mismatch(format!(
            "{}: a diff's base must be a hostmem image (not a raw file)",
            base.path().display()
        )));
    }
    let bs = opts.block_size;
    if bs == 0 || !h.block_size.is_multiple_of(bs) {
        return Err(SnapshotError::Mismatch(format!(
            "{}: the base's block size {} is not a multiple of the diff's {bs}",
            base.path().display(),
            h.block_size
        )));
    }
    let ranges: Vec<(u64, u64)> = h
        .regions
        .iter()
        .map(|r| (r.backend_offset, r.len))
        .collect();
    let len = backend.hold()?.len() as u64;
    if len != h.backend_len {
        return Err(SnapshotError::Mismatch(format!(
            "the base is of a {}-byte backend; '{}' has {len} bytes",
            h.backend_len,
            backend.id()
        )));
    }
    let since = Since {
        base: base.checksum(),
        dirty,
    };
    save_image(backend, &ranges, path.as_ref(), opts, progress, Some(since))
}

/// Restores a diff image and its base into `backend`: the diff's blocks from the diff,
/// the rest from the base, each checked against its own image's checksum. Refused
/// before any write unless `base` is the image the diff was taken against (its header
/// checksum) with the same regions and a block size that divides the base's. The
/// two-image case of [`restore_chain`].
pub fn restore_diff(
    diff: &Image,
    base: &Image,
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    restore_chain(&[base, diff], backend, opts, progress)
}

/// Restores a chain into `backend`: `images[0]` a full image, every later one a diff
/// taken against the one before it (newest last). Each block comes from the newest
/// image that holds it, checked against that image's checksum, so the memory is as it
/// was when the last diff was saved. Refused before any write unless every link names
/// the image before it (its header checksum) and all have the same regions; block
/// sizes may differ (base 2 MiB, diffs 4 KiB) as long as each divides the one before:
/// a base block is then read and checked once for all the diff blocks left to it.
pub fn restore_chain(
    images: &[&Image],
    backend: &Backend,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    check_chain(images)?;
    let Some((&newest, older)) = images.split_last() else {
        return Err(SnapshotError::Mismatch("an empty chain of images".into()));
    };
    restore_from(newest, older, backend, opts, progress, None)
}

/// Refuses a chain (oldest first) that is empty, does not start with a full image, or
/// has a link that does not name the image before it, with the same regions and a
/// block size dividing its base's: what every restore of a chain checks before it
/// touches the memory (copy, [`restore_lazy_chain`](super::restore_lazy_chain)).
pub(crate) fn check_chain(images: &[&Image]) -> Result<()> {
    let Some(&first) = images.first() else {
        return Err(SnapshotError::Mismatch("an empty chain of images".into()));
    };
    if first.header().base.is_some() || first.blocks().contains(&BlockKind::Base) {
        return Err(SnapshotError::Mismatch(format!(
            "{} starts the chain but is a diff: a chain starts with a full image",
            first.path().display()
        )));
    }
    for pair in images.windows(2) {
        check_link(pair[0], pair[1])?;
    }
    Ok(())
}

/// Whether `base` is the image `diff` was taken against, with the same layout.
fn check_link(base: &Image, diff: &Image) -> Result<()> {
    let (d, b) = (diff.header(), base.header());
    let refuse = |why: &str| {
        Err(SnapshotError::Mismatch(format!(
            "{} is not the base of {}: {why}",
            base.path().display(),
            diff.path().display()
        )))
    };
    match d.base {
        None => return refuse("the diff is a full image"),
        Some(c) if c != base.checksum() => {
            return refuse(&format!(
                "the diff names base {c:#018x}, this image is {:#018x}",
                base.checksum()
            ))
        }
        Some(_) => {}
    }
    if d.regions
        .iter()
        .map(|r| (r.backend_offset, r.len))
        .ne(b.regions.iter().map(|r| (r.backend_offset, r.len)))
        || d.backend_len != b.backend_len
    {
        return refuse("their layouts differ");
    }
    // Each diff block must lie inside one base block (`chain::pieces`).
    if !b.block_size.is_multiple_of(d.block_size) {
        return refuse(&format!(
            "the base's block size {} is not a multiple of the diff's {}",
            b.block_size, d.block_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_bits_are_read_per_page_and_past_the_end_as_dirty() {
        let bits = [0b1000_0001u64, 0];
        let d = Dirty {
            page_size: 4096,
            bits: &bits,
        };
        assert!(d.any(0, 4096));
        assert!(!d.any(4096, 6 * 4096));
        assert!(d.any(4096, 7 * 4096));
        assert!(!d.any(64 * 4096, 64 * 4096));
        assert!(d.any(128 * 4096, 4096), "past the bitmap");
        assert!(!d.any(0, 0));
    }

    #[test]
    fn a_diff_takes_the_bitmaps_page_when_it_divides_the_base_block() {
        assert_eq!(diff_block_size(4096, 2 << 20), 4096);
        assert_eq!(diff_block_size(2 << 20, 2 << 20), 2 << 20);
        assert_eq!(diff_block_size(512, 2 << 20), 4096, "at least 4 KiB");
        assert_eq!(diff_block_size(8192, 4096), 4096, "larger than the base's");
        assert_eq!(diff_block_size(8192, 12288), 12288, "does not divide it");
    }
}
