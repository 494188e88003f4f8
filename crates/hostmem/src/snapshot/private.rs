//! Private-mapping restore: a backend whose memory *is* the image file, mapped
//! MAP_PRIVATE (QEMU's templating: `memory-backend-file,mem-path=IMAGE,offset=DATA,
//! share=off,readonly=on,rom=off`). Nothing is copied: pages are read from the image's
//! page cache on first touch, every clone of one image shares those pages, and a write
//! copies just the page written into the clone's own anonymous memory. That is what lets
//! many VMs restore from one image at once in little more memory than one (DESIGN.md
//! §10).
//!
//! It is built with the library's own file backend, so the mapping, its checks and its
//! reports are those of any `memory-backend-file`; this module only decides whether an
//! image's layout allows it and checks the image first.

use super::image::Image;
use super::stamp::{is_stamped, verify_and_stamp};
use super::{Result, SnapshotError};
use crate::props::OnOffAuto;
use crate::{Backend, Builder, Kind, Progress};

/// When a private restore reads the image to check its block checksums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verify {
    /// Every block, at every restore.
    Always,
    /// Every block at the first restore of a file; later restores of the same file
    /// (the stamp beside it, `FILE.verified`, matches: same inode, size, mtime and
    /// ctime) skip the check. Where the stamp cannot be written, every restore checks.
    #[default]
    Once,
    /// Never: the caller vouches for the file (it checked it itself).
    Never,
}

/// How to restore privately.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateOptions {
    /// When to check the block checksums (default [`Verify::Once`]).
    pub verify: Verify,
}

/// A builder for a private-mapping restore of `image` as backend `id`: a file backend
/// over the image (offset = the data's file offset, share off, readonly on, rom off), to
/// which the caller may add a policy, `prealloc` (every page read in now), `dump` and
/// the like before `create()`. The image's checksums are verified first, as
/// `opts.verify` says (every data block read once, which also warms the page cache the
/// clones will share), so a corrupted image is refused rather than mapped; with
/// [`Verify::Once`] a fleet's later clones of an unchanged file map it at once.
///
/// The layout must allow a plain mapping: one region covering the whole backend, its
/// data at a page-aligned file offset, and no diff (a diff's blocks live in two files;
/// restore it by copy). The image's page size is not kept: a file on a disk or tmpfs
/// maps in base pages (THP where the page cache has large folios).
///
/// The file must not be written while a clone maps it: a page a clone has not written
/// yet shows the file's current bytes. hostmem never writes an image in place.
pub fn private_builder(image: &Image, id: &str, opts: &PrivateOptions) -> Result<Builder> {
    let h = image.header();
    let refuse = |why: String| {
        Err(SnapshotError::Mismatch(format!(
            "{} cannot be mapped privately: {why}; restore it by copy (snapshot::restore)",
            image.path().display()
        )))
    };
    if h.base.is_some() {
        return refuse("it is a diff image (its blocks are in two files)".into());
    }
    let region = match h.regions.as_slice() {
        [r] if r.backend_offset == 0 && r.len == h.backend_len => r,
        rs => {
            return refuse(format!(
                "it has {} region(s), not one covering the whole {}-byte backend",
                rs.len(),
                h.backend_len
            ))
        }
    };
    let page = crate::sys::page_size() as u64;
    if !region.file_offset.is_multiple_of(page) {
        return refuse(format!(
            "its data is at file offset {:#x}, not a multiple of the {page}-byte page",
            region.file_offset
        ));
    }
    let check = match opts.verify {
        Verify::Always => true,
        Verify::Once => !is_stamped(image),
        Verify::Never => false,
    };
    if check {
        verify_and_stamp(image, 0, &Progress::new())?;
    }
    Ok(Backend::builder(Kind::File, id)
        .mem_path(image.path())
        .offset(region.file_offset)
        .size(h.backend_len)
        .share(false)
        .readonly(true)
        .rom(OnOffAuto::Off))
}

/// Restores `image` as a new backend `id` mapped privately over the image file: usable
/// as soon as it returns, sharing the image's page cache with every other clone,
/// copying a page only when it is written. See [`private_builder`] for what the image
/// must be and to set more properties.
pub fn restore_private(image: &Image, id: &str, opts: &PrivateOptions) -> Result<Backend> {
    Ok(private_builder(image, id, opts)?.create()?)
}
