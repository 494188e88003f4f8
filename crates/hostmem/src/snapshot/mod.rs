//! Snapshot and restore of guest memory: a backend's bytes saved to an image file and
//! copied back into a backend, in parallel, with a checksum for every block.
//!
//! Why a format of our own and not Firecracker's raw file: a raw file says nothing about
//! itself (which regions, which page size, what was never written) and cannot tell a
//! flipped bit from guest data. An image v1 (`docs/snapshot.md`) keeps the raw file's one
//! good property — each region's bytes are laid out as they are in memory, page-aligned,
//! holes as file holes, so the image can later be mapped privately — and adds a
//! self-describing header and a block table with an xxh3 checksum per block. A raw
//! Firecracker file is read through [`Image::open_raw`] with its layout given.
//!
//! - [`save`] / [`save_ranges`]: sparse (blocks the kernel says were never written are
//!   holes without being read; blocks read as all zero become holes too), parallel.
//! - [`Image::open`], [`Image::verify`]: the header, the table, every checksum.
//! - [`restore`]: copy mode. Every block is read straight into the memory and checked
//!   there; a block that fails is cleared again before the error, which names the
//!   block, its backend offset and page, and the cause.
//!
//! - [`restore_private`]: the image file mapped MAP_PRIVATE as a file backend (QEMU's
//!   templating), its page cache shared by every clone, a page copied when written;
//!   the image verified once per file version ([`Verify`], the stamp beside it).
//!
//! - [`lazy`]: userfaultfd: usable at once, pages served from the image on first touch
//!   (checked first; SIGBUS for a page that cannot be served), the rest filled in the
//!   background in the last run's touch order; a base and its diffs with
//!   [`restore_lazy_chain`].
//! - [`firecracker`]: Firecracker's userfaultfd handshake (its uffd and region list over
//!   a Unix socket) checked and served with [`lazy`]: `hostmem uffd-handler`.

mod chain;
mod diff;
mod error;
pub mod firecracker;
mod format;
mod image;
pub mod lazy;
mod memory;
mod par;
mod place;
mod private;
mod restore;
mod save;
mod stamp;
mod table;
mod writer;

pub use diff::{diff_block_size, restore_chain, restore_diff, save_diff, save_diff_with, Dirty};
pub use error::{BlockFault, SnapshotError};
pub use format::{BlockAt, BlockKind, Header, RegionEntry, MAGIC, MAX_BLOCK_SIZE, VERSION};
pub use image::{Image, RawRegion};
pub use lazy::{
    restore_lazy, restore_lazy_chain, FillPriority, LazyOptions, LazyProgress, LazyRegion,
    LazyReport, LazyServer,
};
pub use place::check_room;
pub use private::{private_builder, restore_private, PrivateOptions, Verify};
pub use restore::{restore, RestoreOptions, RestoreReport, VerifyReport};
pub use save::{save, save_ranges, SaveOptions, SaveReport};
pub use stamp::{is_stamped, stamp_path, verify_and_stamp, Stamped};
pub use table::{VERSION_DENSE, VERSION_SPARSE};

/// Result of snapshot operations.
pub type Result<T> = std::result::Result<T, SnapshotError>;

/// Block size of new images: 2 MiB, a THP and a 2 MiB huge page, large enough that a
/// block is one long sequential copy, small enough that holes are found at a useful
/// granularity and a thread's buffer stays small.
pub const DEFAULT_BLOCK_SIZE: u64 = 2 << 20;

/// The checksum of a block's bytes: xxh3, 64 bits. xxh3 rather than BLAKE3 because the
/// checksum guards against corruption (a flipped bit, a torn or truncated write), not
/// against an adversary: xxh3 runs at tens of GiB/s on one core, well above memory
/// copy speed, so checking costs a restore nothing measurable, while BLAKE3 on one core
/// is a few GiB/s.
///
/// The crate is `twox-hash` (pure Rust, no dependencies of its own with the features
/// we take) because it picks AVX2 at run time: `xxhash-rust`, used before, only uses
/// what the build targets (SSE2 for x86-64), and hashed 2 MiB blocks at 13–16 GiB/s
/// here against twox-hash's 23–29 GiB/s, the same values (the tests check them against
/// `xxhash-rust`), which made the hash the copy restore's largest cost on 2 MiB pages.
pub fn block_checksum(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// [`block_checksum`] of bytes that arrive piece by piece: the same value as the
/// checksum of the pieces joined.
pub(crate) struct Checksum(twox_hash::XxHash3_64);

impl Checksum {
    pub(crate) fn new() -> Checksum {
        Checksum(twox_hash::XxHash3_64::with_seed(0))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
    }

    pub(crate) fn digest(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

/// Whether every byte is zero: 64 bytes OR-ed at a time (the compiler vectorises the
/// fold), so a 2 MiB block is checked at memory speed.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_xxh3_64_whole_or_in_pieces() {
        // Known xxh3-64 values (seed 0): the empty input and "a".
        assert_eq!(block_checksum(b""), 0x2d06800538d394c2);
        assert_eq!(block_checksum(b"a"), 0xe6c632b61e964e1f);
        let bytes: Vec<u8> = (0..(3u32 << 20) + 77)
            .map(|i| ((i * 31) >> 3) as u8)
            .collect();
        let whole = block_checksum(&bytes);
        for piece in [1, 4096, 128 << 10, 1 << 20] {
            let mut c = Checksum::new();
            bytes.chunks(piece).for_each(|p| c.update(p));
            assert_eq!(c.digest(), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn zero_check_finds_one_set_byte_anywhere() {
        let mut v = vec![0u8; 4096 + 13];
        assert!(is_zero(&v));
        for i in [0, 7, 63, 64, 4095, 4096, 4108] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
