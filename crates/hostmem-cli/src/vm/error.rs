//! Why `hostmem vm` failed, one variant per cause, each naming what to fix.

use hostmem::remote::RemoteError;

use super::client::QmpError;
use super::ramblock::RamBlockError;

/// Why `hostmem vm` could not report or move.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Talking to QEMU failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// `info ramblock` cannot be read.
    #[error(transparent)]
    RamBlock(#[from] RamBlockError),
    /// Reading or moving QEMU's memory failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// QEMU answered a query with something we cannot read.
    #[error("unexpected {command} reply from QEMU: {why}")]
    Reply {
        /// The command.
        command: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// No backend has that id.
    #[error("QEMU has no memory backend {id:?} (backends: {known})")]
    UnknownBackend {
        /// The id asked for.
        id: String,
        /// The ids QEMU has.
        known: String,
    },
    /// The backend has no RAM block: not in the guest's memory map.
    #[error(
        "memory backend {id:?} is not attached to a RAM block (no -numa node, DIMM or machine \
         memory uses it; QEMU gives its block no name), so there is no guest memory to move"
    )]
    NotAttached {
        /// The backend id.
        id: String,
    },
    /// QEMU exited.
    #[error("QEMU (pid {pid}) exited")]
    Exited {
        /// Its pid.
        pid: u32,
    },
    /// The device to resize is not a virtio-mem device (or does not exist).
    #[error(
        "{} (virtio-mem devices: {known}); nothing was changed",
        match kind {
            Some(k) => format!("{id:?} is {k}, not a virtio-mem device"),
            None => format!("QEMU has no device {id:?}"),
        }
    )]
    NotVirtioMem {
        /// The id asked for.
        id: String,
        /// What it is, when it exists (`a dimm memory device`, `a virtio-net-pci device`).
        kind: Option<String>,
        /// The virtio-mem devices' ids, or `none`.
        known: String,
    },
    /// A size a virtio-mem device cannot be asked for.
    #[error("SIZE {size:?}: {why}; nothing was changed")]
    BadResize {
        /// What was given.
        size: String,
        /// Why it does not do.
        why: String,
    },
    /// The node list does not parse.
    #[error("NODES {text:?}: {why}")]
    BadNodes {
        /// What was given.
        text: String,
        /// Why it is not a node list.
        why: String,
    },
}

impl VmError {
    /// The same error, worded as QEMU having gone when the process `pid` no longer
    /// exists (a closed socket or a vanished /proc entry mean that). An exiting QEMU
    /// closes its socket a moment before /proc shows it gone, so a closed socket waits
    /// up to a second for the process to end before it is called anything else.
    pub fn or_exited(self, pid: u32) -> VmError {
        let alive = || hostmem::Process::new(pid).is_ok_and(|p| p.is_alive());
        match self {
            VmError::Qmp(QmpError::Gone { .. })
            | VmError::Remote(RemoteError::NoProcess { .. }) => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while alive() {
                    if std::time::Instant::now() >= deadline {
                        return self;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                VmError::Exited { pid }
            }
            e => e,
        }
    }
}
