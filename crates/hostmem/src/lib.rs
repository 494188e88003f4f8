//! hostmem: host memory backends for virtual machines.
//!
//! A backend is a VM's guest RAM on a Linux host: anonymous memory, a file, a memfd,
//! POSIX shared memory or hugetlbfs pages of a given size, placed on NUMA nodes by a
//! policy, preallocated in parallel, marked for KSM merging or kept out of core dumps.
//! The behaviour follows QEMU's `memory-backend-*` objects, and every claim about the
//! memory can be read back from the kernel ([`inspect`]).
//!
//! How the crate is laid out, and where to add a kind, a property or a policy:
//! `docs/design.md` in the repository.
//!
//! ```no_run
//! use hostmem::{Backend, Kind, NodeSet, Policy};
//! let ram = Backend::builder(Kind::Ram, "ram0")
//!     .size(1 << 30)
//!     .policy(Policy::Bind)
//!     .host_nodes(NodeSet::parse("0").unwrap())
//!     .prealloc(true)
//!     .create()?;
//! let view = ram.inspect()?;
//! assert_eq!(view.resident, 1 << 30);
//! # Ok::<(), hostmem::Error>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod context;
pub mod error;
pub mod inspect;
pub mod kind;
pub mod limits;
pub mod numa;
pub mod objects;
pub mod objspec;
pub mod plug;
pub mod prealloc;
pub mod preflight;
pub mod props;
pub mod remote;
pub mod size;
#[cfg(feature = "json")]
pub mod snapshot;
#[cfg(test)]
mod testing;
// The one module allowed to use `unsafe`; private to the crate.
#[allow(unsafe_code)]
pub(crate) mod sys;
#[cfg(feature = "vm-memory")]
pub mod vmm;

pub use backend::{Backend, BatchError, Builder, InUse, RebindReport};
pub use context::{ContextLink, ThreadContext};
pub use error::{Error, Result};
pub use inspect::{KernelView, Placement};
pub use kind::{Config, Kind, KindConfig};
pub use numa::{HostTopology, NodeSet, Policy};
pub use objspec::ObjectSpec;
pub use prealloc::Progress;
pub use props::{MachineDefaults, Prop, PropType, PropValue};
pub use remote::{Process, RemoteRegion};
pub use sys::FileSizePromise;
/// The vm-memory this crate's regions implement (0.18, with `backend-mmap` and
/// `backend-bitmap`): use it rather than a dependency of your own, so the versions and
/// features agree.
#[cfg(feature = "vm-memory")]
pub use vm_memory;
#[cfg(feature = "vm-memory")]
pub use vmm::VmmError;
