//! What can go wrong looking at or moving another process's memory. Permission errors
//! name what the kernel asks for, so the fix is in the message.

use crate::size::format_size;

/// What the kernel asks before /proc/PID/smaps and numa_maps may be read.
pub const READ_PERMISSION: &str = "ptrace read access to the process \
    (PTRACE_MODE_READ_FSCREDS: the same user and a dumpable process, or CAP_SYS_PTRACE)";
/// What the kernel asks before move_pages(2) may touch another process (Linux 4.13+).
pub const MOVE_PERMISSION: &str = "ptrace read access to the process \
    (PTRACE_MODE_READ_REALCREDS: the same real user, or CAP_SYS_PTRACE)";
/// What MPOL_MF_MOVE_ALL asks on top.
pub const MOVE_ALL_PERMISSION: &str = "CAP_SYS_NICE (MPOL_MF_MOVE_ALL moves pages other \
    processes map too)";

/// Why a view of, or a move in, another process's memory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The process does not exist (any more).
    #[error("process {pid} does not exist (it exited?)")]
    NoProcess {
        /// The process id.
        pid: u32,
    },
    /// The process exited while its pages were being moved.
    #[error("process {pid} exited during the move, after {moved} pages had moved")]
    Exited {
        /// The process id.
        pid: u32,
        /// Pages moved before it went.
        moved: u64,
    },
    /// The kernel refused: `needs` says what it asks for.
    #[error("{what} of process {pid}: permission denied; the kernel asks for {needs}")]
    Permission {
        /// The process id.
        pid: u32,
        /// What was refused (`reading /proc/PID/smaps`, `move_pages`).
        what: String,
        /// What the kernel asks for.
        needs: &'static str,
    },
    /// Part of the range is not mapped in the process.
    #[error(
        "range {start:#x}+{len:#x} is not mapped in process {pid}: nothing at {hole:#x} \
         (see /proc/{pid}/maps)"
    )]
    NotMapped {
        /// The process id.
        pid: u32,
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
        /// The first address of the range no mapping covers.
        hole: u64,
    },
    /// No target node was given.
    #[error("no target nodes given")]
    NoNodes,
    /// A target node cannot hold memory (missing, offline, no memory).
    #[error("refused before moving any page: {0}")]
    UnusableNode(String),
    /// A target node has too little memory available for its share.
    #[error(
        "refused before moving any page: node {node} would receive {} but has {} available",
        format_size(*needed),
        format_size(*free)
    )]
    NotEnoughFree {
        /// The node.
        node: u32,
        /// Bytes headed to it.
        needed: u64,
        /// Bytes it has free now.
        free: u64,
    },
    /// A target node's huge page pool has too few free pages.
    #[error(
        "refused before moving any page: node {node} would receive {needed} {} huge pages \
         but its pool has {free} free",
        format_size(*page_size)
    )]
    NotEnoughHugePages {
        /// The node.
        node: u32,
        /// Bytes per huge page.
        page_size: u64,
        /// Pages headed to it.
        needed: u64,
        /// Free pages of its pool.
        free: u64,
    },
    /// Any other failure of a read or a system call, with the kernel's reason.
    #[error("{what} of process {pid}: {reason}")]
    Io {
        /// The process id.
        pid: u32,
        /// What failed.
        what: String,
        /// The kernel's reason.
        reason: String,
    },
}

impl RemoteError {
    /// Maps an errno of `what` on process `pid` to the error that explains it.
    pub(crate) fn from_io(pid: u32, what: &str, e: &std::io::Error, needs: &'static str) -> Self {
        match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => RemoteError::NoProcess { pid },
            Some(libc::EACCES) | Some(libc::EPERM) => RemoteError::Permission {
                pid,
                what: what.to_string(),
                needs,
            },
            _ => RemoteError::Io {
                pid,
                what: what.to_string(),
                reason: crate::sys::strerror(e),
            },
        }
    }

    /// Maps a failed move_pages(2) call that moves pages on `pid`, after `moved` pages
    /// had moved: the process gone, or a refusal naming what the kernel asks (EPERM
    /// with MPOL_MF_MOVE_ALL is the missing CAP_SYS_NICE).
    pub(crate) fn from_move(pid: u32, e: &std::io::Error, move_all: bool, moved: u64) -> Self {
        if e.raw_os_error() == Some(libc::ESRCH) {
            return RemoteError::Exited { pid, moved };
        }
        let needs = if move_all && e.raw_os_error() == Some(libc::EPERM) {
            MOVE_ALL_PERMISSION
        } else {
            MOVE_PERMISSION
        };
        RemoteError::from_io(pid, "move_pages", e, needs)
    }
}

/// The kernel's name for an errno move_pages(2) puts in a page's status, and what it
/// means for that page.
pub fn page_status_reason(errno: i32) -> (&'static str, &'static str) {
    match errno {
        libc::EACCES => (
            "EACCES",
            "mapped by more than one process; only MPOL_MF_MOVE_ALL (CAP_SYS_NICE) moves it",
        ),
        libc::EBUSY => ("EBUSY", "busy (locked, under I/O or being migrated)"),
        libc::EFAULT => ("EFAULT", "the zero page or nothing mapped there"),
        libc::ENOENT => ("ENOENT", "not present (never faulted in)"),
        libc::ENOMEM => ("ENOMEM", "the target node had no memory for it"),
        libc::EIO => ("EIO", "could not be written back before moving"),
        libc::EINVAL => ("EINVAL", "dirty and its file system cannot migrate it"),
        libc::E2BIG => ("E2BIG", "too large to move"),
        libc::EAGAIN => ("EAGAIN", "temporarily pinned; try again"),
        _ => ("errno", "other kernel status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    fn os(errno: i32) -> Error {
        Error::from_raw_os_error(errno)
    }

    #[test]
    fn a_gone_process_reads_as_no_process() {
        for errno in [libc::ESRCH, libc::ENOENT] {
            let e = RemoteError::from_io(42, "reading /proc/42/smaps", &os(errno), READ_PERMISSION);
            assert_eq!(e.to_string(), "process 42 does not exist (it exited?)");
        }
    }

    #[test]
    fn a_refusal_names_what_was_refused_and_what_the_kernel_asks() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = RemoteError::from_io(42, "reading /proc/42/smaps", &os(errno), READ_PERMISSION);
            assert_eq!(
                e.to_string(),
                format!(
                    "reading /proc/42/smaps of process 42: permission denied; the kernel asks \
                     for {READ_PERMISSION}"
                )
            );
        }
    }

    #[test]
    fn other_errnos_carry_the_kernels_reason() {
        let e = RemoteError::from_io(42, "move_pages", &os(libc::EINVAL), MOVE_PERMISSION);
        let msg = e.to_string();
        assert!(msg.starts_with("move_pages of process 42: "), "{msg}");
        assert!(msg.contains("Invalid argument"), "{msg}");
    }

    #[test]
    fn a_process_gone_during_a_move_reports_the_pages_already_moved() {
        let e = RemoteError::from_move(42, &os(libc::ESRCH), false, 17);
        assert_eq!(
            e.to_string(),
            "process 42 exited during the move, after 17 pages had moved"
        );
    }

    #[test]
    fn eperm_with_move_all_asks_for_cap_sys_nice() {
        let needs = |errno, move_all| match RemoteError::from_move(42, &os(errno), move_all, 0) {
            RemoteError::Permission { needs, what, .. } => {
                assert_eq!(what, "move_pages");
                needs
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(needs(libc::EPERM, true), MOVE_ALL_PERMISSION);
        assert_eq!(needs(libc::EPERM, false), MOVE_PERMISSION);
        assert_eq!(
            needs(libc::EACCES, true),
            MOVE_PERMISSION,
            "EACCES is ptrace"
        );
    }

    #[test]
    fn each_page_status_has_the_kernels_name_and_its_meaning() {
        let cases = [
            (libc::EACCES, "EACCES", "MPOL_MF_MOVE_ALL (CAP_SYS_NICE)"),
            (libc::EBUSY, "EBUSY", "busy"),
            (libc::EFAULT, "EFAULT", "zero page"),
            (libc::ENOENT, "ENOENT", "never faulted in"),
            (libc::ENOMEM, "ENOMEM", "target node had no memory"),
            (libc::EIO, "EIO", "written back"),
            (libc::EINVAL, "EINVAL", "cannot migrate"),
            (libc::E2BIG, "E2BIG", "too large"),
            (libc::EAGAIN, "EAGAIN", "try again"),
            (libc::EXDEV, "errno", "other kernel status"),
        ];
        for (errno, name, meaning) in cases {
            let (n, m) = page_status_reason(errno);
            assert_eq!(n, name);
            assert!(m.contains(meaning), "{name}: {m}");
        }
    }
}
