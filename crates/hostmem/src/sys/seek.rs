//! Where a file has data: `lseek(SEEK_DATA)`, so a snapshot skips what was never
//! written without reading it (a read of a tmpfs or hugetlbfs hole through a mapping
//! would allocate the page it asks about).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Whether `[offset, offset+len)` of `fd` may hold data: false only when the kernel
/// says the range is a hole. File systems that do not track holes answer "all data"
/// (the generic `lseek`), and an `lseek` that fails for want of support is taken as data
/// too: the caller then reads and finds zeros, never loses bytes.
///
/// `lseek` moves the descriptor's file offset; hostmem reads and writes its backing
/// files only with `pread`/`pwrite`, which ignore it.
#[cfg_attr(not(feature = "json"), allow(dead_code))]
pub(crate) fn may_hold_data(fd: impl AsFd, offset: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    let Ok(start) = libc::off_t::try_from(offset) else {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    // SAFETY: lseek on a descriptor borrowed for the call; no memory is passed.
    let r = unsafe { libc::lseek(fd.as_fd().as_raw_fd(), start, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // No data at or after `offset`.
            Some(libc::ENXIO) => Ok(false),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(true),
            _ => Err(e),
        };
    }
    Ok((r as u64) < offset.saturating_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sparse_file_has_data_only_where_written() {
        let fd = super::super::memfd_create("seek-test", 0).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        assert!(!may_hold_data(&f, 0, 4 << 20).unwrap());
        assert!(may_hold_data(&f, 0, (4 << 20) + 1).unwrap());
        assert!(may_hold_data(&f, 4 << 20, 4096).unwrap());
        assert!(!may_hold_data(&f, (4 << 20) + 4096, 4 << 20).unwrap());
        assert!(!may_hold_data(&f, 0, 0).unwrap());
    }
}
