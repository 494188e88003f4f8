//! The kinds of backend, each in its own file, answering the kind questions through
//! `KindOps`: what it checks before mapping and the page size it learns (`Plan`), how
//! it maps, whether its size rounds up to the page, how its pages are preallocated, what
//! KSM can do with it, and what delete does. The lifecycle in `backend/` asks; it never
//! tests which kind it has.
//!
//! Adding a kind is one file here (its property group, its `SPEC` and its `KindOps`) and
//! one line in each table of this file that lists the kinds: [`Kind`], `Kind::ALL`,
//! `Kind::spec`, [`KindConfig`] and its `defaults`, `ops` and `ops_mut`.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};
use crate::prealloc::Method;
use crate::props::{Common, MachineDefaults, Prop};
use crate::sys::{self, RawMapping};

/// THP size on x86 and arm64 with 4 KiB pages: anonymous memory is aligned to it.
pub const THP_ALIGN: usize = 2 << 20;

/// The questions the lifecycle asks a kind, answered from the kind's own settings.
pub(crate) trait KindOps: fmt::Debug + std::any::Any {
    /// Which kind this is.
    fn kind(&self) -> Kind;

    /// Checks the kind's own properties against the common ones and learns the page
    /// size, without mapping anything.
    fn plan(&self, t: &Target<'_>) -> Result<Plan>;

    /// Maps `plan.len` bytes of memory.
    fn map(&self, t: &Target<'_>, plan: &Plan) -> Result<Mapped>;

    /// Whether a size that is not whole pages is rounded up (QEMU: ram) rather than
    /// refused (QEMU 9.1+: file, memfd, shm).
    fn rounds_size_up(&self) -> bool {
        false
    }

    /// Whether the memory is mapped writable.
    fn writable(&self) -> bool {
        true
    }

    /// How to fault the pages in; None where no safe way exists on this kernel.
    fn prealloc_method(&self, _common: &Common, has_populate_write: bool) -> Option<Method> {
        if !self.writable() {
            Some(Method::Populate { write: false })
        } else if has_populate_write {
            Some(Method::Populate { write: true })
        } else {
            None
        }
    }

    /// Whether the kernel has set aside what a first touch of any page needs, so a
    /// fault can fail only by the OOM killer (which the memory limits guard), never by
    /// SIGBUS. Not so for huge pages without a reservation (`reserve=off`): a touch
    /// when the pool is empty raises SIGBUS. Such memory becomes guest memory only
    /// once preallocated (`vmm`).
    fn faults_are_backed(&self, common: &Common, plan: &Plan) -> bool {
        !plan.hugetlb || common.reserve
    }

    /// Whether the memory takes host RAM the kernel cannot write back and drop under
    /// pressure, so the memory limits count it: everything but a shared mapping of a
    /// file on a disk file system (tmpfs and shm pages have nowhere to go).
    fn takes_ram(&self, _common: &Common) -> bool {
        true
    }

    /// Whether KSM can merge this memory at all (private anonymous memory only).
    fn mergeable(&self, _common: &Common) -> bool {
        false
    }

    /// The path the memory lives under, for errors about a full file system.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// What delete does before the memory is unmapped.
    fn on_delete(&self, _mapped: &Mapped) {}

    /// The backend came to life: settle properties QEMU reads back resolved (`rom`).
    fn settle(&mut self) {}
}

mod config;
pub mod file;
pub mod memfd;
pub mod ram;
pub mod shm;

pub use config::{lookup, properties, Config};

/// The backend kinds, by QEMU's type names. Adding one: its file, and one line in each
/// table below that lists the kinds (the compiler names every `match` left without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `memory-backend-ram`: `kind/ram.rs`.
    Ram,
    /// `memory-backend-file`: `kind/file.rs`.
    File,
    /// `memory-backend-memfd`: `kind/memfd.rs`.
    Memfd,
    /// `memory-backend-shm`: `kind/shm.rs`.
    Shm,
}

/// What a kind is, statically: its QEMU type name and the facts that depend on nothing
/// but the kind. Each kind file has one, `SPEC`.
#[derive(Debug)]
pub(crate) struct KindSpec {
    /// QEMU's type name (`memory-backend-ram`).
    pub qom_type: &'static str,
    /// Whether `share` defaults to on (memfd and shm: the point is sharing).
    pub shared_by_default: bool,
    /// Whether the memory comes from an fd another process can map.
    pub has_fd: bool,
    /// The kind's own properties (after the common ones).
    pub own_props: &'static [Prop],
}

impl Kind {
    /// Every kind, in the order QEMU added them.
    pub const ALL: &'static [Kind] = &[Kind::Ram, Kind::File, Kind::Memfd, Kind::Shm];

    fn spec(self) -> &'static KindSpec {
        match self {
            Kind::Ram => &ram::SPEC,
            Kind::File => &file::SPEC,
            Kind::Memfd => &memfd::SPEC,
            Kind::Shm => &shm::SPEC,
        }
    }

    /// QEMU's type name.
    pub fn qom_type(self) -> &'static str {
        self.spec().qom_type
    }

    /// Whether `share` defaults to on for this kind.
    pub fn shares_by_default(self) -> bool {
        self.spec().shared_by_default
    }

    /// The kind's own properties (after the common ones).
    pub fn own_props(self) -> &'static [Prop] {
        self.spec().own_props
    }

    /// The kind named by QEMU's type name.
    pub fn from_qom_type(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.qom_type() == s)
    }

    /// Whether its memory comes from an fd another process can map (memfd, file,
    /// shm); `memory-backend-ram` is anonymous.
    pub fn has_fd(self) -> bool {
        self.spec().has_fd
    }
}

/// A kind's own settings; the variant is the kind.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KindConfig {
    /// Settings of `memory-backend-ram`.
    Ram(ram::RamConfig),
    /// Settings of `memory-backend-file`.
    File(file::FileConfig),
    /// Settings of `memory-backend-memfd`.
    Memfd(memfd::MemfdConfig),
    /// Settings of `memory-backend-shm`.
    Shm(shm::ShmConfig),
}

impl KindConfig {
    /// The kind's settings at their defaults.
    pub(crate) fn defaults(kind: Kind, machine: &MachineDefaults) -> KindConfig {
        let shared = kind.shares_by_default();
        match kind {
            Kind::Ram => KindConfig::Ram(ram::RamConfig::defaults(shared, machine)),
            Kind::File => KindConfig::File(file::FileConfig::defaults(shared, machine)),
            Kind::Memfd => KindConfig::Memfd(memfd::MemfdConfig::defaults(shared, machine)),
            Kind::Shm => KindConfig::Shm(shm::ShmConfig::defaults(shared, machine)),
        }
    }

    /// Which kind these are the settings of.
    pub fn kind(&self) -> Kind {
        self.ops().kind()
    }

    pub(crate) fn ops(&self) -> &dyn KindOps {
        match self {
            KindConfig::Ram(c) => c,
            KindConfig::File(c) => c,
            KindConfig::Memfd(c) => c,
            KindConfig::Shm(c) => c,
        }
    }

    pub(crate) fn ops_mut(&mut self) -> &mut dyn KindOps {
        match self {
            KindConfig::Ram(c) => c,
            KindConfig::File(c) => c,
            KindConfig::Memfd(c) => c,
            KindConfig::Shm(c) => c,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qom_type())
    }
}

/// The backend a kind works for: names for errors, and the common settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub kind: Kind,
    pub id: &'a str,
    pub common: &'a Common,
}

impl Target<'_> {
    /// A property's value is invalid for this backend.
    pub fn invalid(&self, prop: &Prop, value: impl ToString, why: impl ToString) -> Error {
        Error::Invalid {
            kind: self.kind.qom_type(),
            id: self.id.to_string(),
            prop: prop.name,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// Mapping (or making the memory to map) failed.
    pub fn map_failed(&self, e: &std::io::Error) -> Error {
        Error::Alloc {
            kind: self.kind.qom_type(),
            id: self.id.to_string(),
            step: Step::Map,
            reason: sys::strerror(e),
            source: Some(sys::copy_io_error(e)),
        }
    }
}

/// What a kind learned about the memory before mapping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Bytes to map: the size, rounded up to the page where the kind rounds.
    pub len: u64,
    /// Page size of the memory.
    pub page_size: u64,
    /// hugetlbfs-backed (memfd hugetlb or a file on hugetlbfs): pages come from a pool.
    pub hugetlb: bool,
    /// A hugetlbfs file that already exists may hold its pages already.
    pub existing_file: bool,
}

/// Memory a kind has mapped, with what must be undone if the backend does not
/// come to life.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub map: RawMapping,
    pub fd: Option<OwnedFd>,
    /// Offset of the mapping in `fd`.
    pub fd_offset: u64,
    /// A file this backend created at a named path: removed if allocation fails.
    pub created_file: CreatedFile,
    /// Warnings about the memory as mapped (QEMU prints them; reports show them).
    pub notes: Vec<String>,
    /// Whether whoever holds `fd` can shrink the file under the mapping.
    pub fd_size: FdSize,
}

/// Whether the file behind a mapping can shrink under it. Memory past a file's end
/// raises SIGBUS on access, vm-memory's copies included, so a descriptor that can
/// shrink the file is handed out only where it cannot (`backend/share.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdSize {
    /// A memfd sealed against shrinking (`seal=on`), or no descriptor at all.
    Fixed,
    /// A memfd made with sealing allowed but not sealed (`seal=off`): sealed against
    /// shrinking (F_SEAL_SHRINK, growing stays possible) before its descriptor leaves.
    Sealable,
    /// A file the kernel cannot seal (shm, a file or temp file): its descriptor leaves
    /// only on the caller's [`FileSizePromise`](crate::FileSizePromise).
    Unsealable,
}

impl Mapped {
    /// Memory mapped from the whole of a descriptor this kind made (memfd, shm), whose
    /// file can or cannot shrink as `fd_size` says.
    pub fn of_fd(map: RawMapping, fd: OwnedFd, fd_size: FdSize) -> Mapped {
        Mapped {
            fd: Some(fd),
            fd_size,
            ..Mapped::anonymous(map)
        }
    }

    /// Memory without a descriptor or created file.
    pub fn anonymous(map: RawMapping) -> Mapped {
        Mapped {
            map,
            fd: None,
            fd_offset: 0,
            created_file: CreatedFile::default(),
            notes: Vec::new(),
            fd_size: FdSize::Fixed,
        }
    }
}

/// A file made for a backend at a named path: removed on drop unless kept, so every
/// way out of a failed allocation removes it.
#[derive(Debug, Default)]
pub(crate) struct CreatedFile(Option<PathBuf>);

impl CreatedFile {
    /// Takes charge of removing `path` unless [`CreatedFile::keep`] is called.
    pub fn new(path: Option<PathBuf>) -> Self {
        CreatedFile(path)
    }

    /// The backend came to life: the file stays.
    pub fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The file system holding `path`, or its directory's if it does not exist yet (a
/// file the backend will create).
pub(crate) fn statfs_of(path: &Path) -> std::io::Result<sys::FsInfo> {
    let probe = if path.exists() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    sys::statfs(probe)
}

/// Page size of the file system holding `path` (or its directory if it does not
/// exist), and whether it is hugetlbfs.
pub(crate) fn fs_page_size(path: &Path) -> std::io::Result<(u64, bool)> {
    let fs = statfs_of(path)?;
    if fs.magic == sys::HUGETLBFS_MAGIC {
        Ok((fs.block_size, true))
    } else {
        Ok((sys::page_size() as u64, false))
    }
}

/// A plan for memory of base pages.
pub(crate) fn base_pages(len: u64) -> Plan {
    Plan {
        len,
        page_size: sys::page_size() as u64,
        hugetlb: false,
        existing_file: false,
    }
}
