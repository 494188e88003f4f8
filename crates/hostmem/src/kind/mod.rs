//! How each kind of backend gets its memory: anonymous (`ram`), a file or a temp file
//! in a directory (`file`), or a memfd (`memfd`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::props::{Config, Kind};
use crate::sys::{self, RawMapping};

pub mod file;
pub mod memfd;
pub mod ram;

/// THP size on x86 and arm64 with 4 KiB pages: anonymous memory is aligned to it.
pub const THP_ALIGN: usize = 2 << 20;

/// What validation learned about the memory before mapping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub page_size: u64,
    /// hugetlbfs-backed (memfd hugetlb or a file on hugetlbfs): pages come from a pool.
    pub hugetlb: bool,
    /// A hugetlbfs file that already exists may hold its pages already.
    pub existing_file: bool,
}

/// Memory a kind has mapped, with what must be undone if the backend does not
/// come to life.
#[derive(Debug)]
pub struct Mapped {
    pub map: RawMapping,
    pub fd: Option<OwnedFd>,
    /// Offset of the mapping in `fd`.
    pub fd_offset: u64,
    /// A file this backend created at a named path: removed if allocation fails.
    pub created_file: CreatedFile,
}

/// A file made for a backend at a named path: removed on drop unless kept, so every
/// way out of a failed allocation removes it.
#[derive(Debug, Default)]
pub struct CreatedFile(Option<PathBuf>);

impl CreatedFile {
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

impl Mapped {
    /// Keeps the created file (allocation succeeded).
    pub fn keep_file(&mut self) {
        self.created_file.keep();
    }
}

/// Checks kind-specific properties and learns the page size, without mapping.
pub fn plan(kind: Kind, id: &str, cfg: &Config) -> Result<Plan> {
    match kind {
        Kind::Ram => Ok(Plan {
            page_size: sys::page_size() as u64,
            hugetlb: false,
            existing_file: false,
        }),
        Kind::File => file::plan(id, cfg),
        Kind::Memfd => memfd::plan(id, cfg),
    }
}

/// Maps the memory.
pub fn map(kind: Kind, id: &str, cfg: &Config, plan: &Plan) -> Result<Mapped> {
    match kind {
        Kind::Ram => ram::map(id, cfg),
        Kind::File => file::map(id, cfg, plan),
        Kind::Memfd => memfd::map(id, cfg, plan),
    }
}

pub(crate) fn invalid(
    kind: Kind,
    id: &str,
    prop: &'static str,
    value: impl ToString,
    why: impl ToString,
) -> Error {
    Error::Invalid {
        kind: kind.qom_type(),
        id: id.to_string(),
        prop,
        value: value.to_string(),
        why: why.to_string(),
    }
}

pub(crate) fn map_failed(kind: Kind, id: &str, e: &std::io::Error) -> Error {
    Error::Alloc {
        kind: kind.qom_type(),
        id: id.to_string(),
        step: crate::error::Step::Map,
        reason: sys::strerror(e),
    }
}

/// Page size of the file system holding `path` (or its directory if it does not exist).
pub(crate) fn fs_page_size(path: &Path) -> std::io::Result<(u64, bool)> {
    let probe = if path.exists() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let fs = sys::statfs(probe)?;
    if fs.magic == sys::HUGETLBFS_MAGIC {
        Ok((fs.block_size, true))
    } else {
        Ok((sys::page_size() as u64, false))
    }
}
