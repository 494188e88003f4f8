//! `memory-backend-file`: a file used as is, created if missing, or a directory in which
//! an unlinked temp file is made. The page size is the file system's (hugetlbfs block
//! size), so hugetlbfs files give huge pages.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{fs_page_size, CreatedFile, FdSize, Kind, KindOps, KindSpec, Mapped, Plan, Target};
use crate::error::{Error, Result};
use crate::props::group::property_group;
use crate::props::{Common, OnOffAuto};
use crate::size::format_size;
use crate::sys::{self, MapOptions, RawMapping};

property_group! {
    /// The settings of `memory-backend-file`.
    pub struct FileConfig in kind {
        /// open and map the file read-only
        READONLY readonly: bool = "readonly", live Fixed, default |_, _| false;
        /// alignment of the mapping (0: the page size)
        ALIGN align: u64 = "align", live Fixed, default |_, _| 0;
        /// offset of the memory in the file
        OFFSET offset: u64 = "offset", live Fixed, default |_, _| 0;
        /// persistent memory: map with MAP_SYNC
        PMEM pmem: bool = "pmem", live Fixed, default |_, _| false;
        /// file, or directory for an unlinked temp file (required)
        MEM_PATH mem_path: PathBuf = "mem-path", live Fixed, required,
            default |_, _| PathBuf::new();
        /// drop the file's data on delete
        DISCARD_DATA discard_data: bool = "discard-data", live Immediate, default |_, _| false;
        /// the guest sees the memory as ROM
        ROM rom: OnOffAuto = "rom", live Fixed, default |_, _| OnOffAuto::Auto;
    }
}

/// What `memory-backend-file` is, statically.
pub(crate) const SPEC: KindSpec = KindSpec {
    qom_type: "memory-backend-file",
    shared_by_default: false,
    has_fd: true,
    own_props: FileConfig::PROPS,
};

fn open_error(path: &Path, e: &std::io::Error) -> Error {
    Error::OpenBackingStore {
        path: path.to_path_buf(),
        source: sys::copy_io_error(e),
    }
}

impl FileConfig {
    /// Whether the guest sees ROM: `rom`, or for `auto` whether the file is read-only
    /// (QEMU's rule). ROM is mapped read-only; a read-only file with `rom=off` is mapped
    /// writable and private (copy on write), as QEMU does.
    fn rom_on(&self) -> bool {
        match self.rom {
            OnOffAuto::On => true,
            OnOffAuto::Off => false,
            OnOffAuto::Auto => self.readonly,
        }
    }

    fn path_set(&self) -> Result<&Path> {
        if self.mem_path.as_os_str().is_empty() {
            Err(Error::Missing(FileConfig::MEM_PATH.name))
        } else {
            Ok(&self.mem_path)
        }
    }
}

impl KindOps for FileConfig {
    fn kind(&self) -> Kind {
        Kind::File
    }

    fn plan(&self, t: &Target<'_>) -> Result<Plan> {
        let path = self.path_set()?;
        let size = t.common.size;
        let (page, hugetlb) = fs_page_size(path).map_err(|e| open_error(path, &e))?;
        // QEMU opens a read-only mem-path as a file: a directory cannot be one, and no
        // temp file is made for memory nobody may write.
        if self.readonly && path.is_dir() {
            return Err(open_error(
                path,
                &std::io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        if self.align != 0 && (!self.align.is_power_of_two() || !self.align.is_multiple_of(page)) {
            return Err(t.invalid(
                &FileConfig::ALIGN,
                self.align,
                format!(
                    "must be a power of two and a multiple of the page size {}",
                    format_size(page)
                ),
            ));
        }
        if !self.offset.is_multiple_of(page) {
            return Err(t.invalid(
                &FileConfig::OFFSET,
                self.offset,
                format!("must be a multiple of the page size {}", format_size(page)),
            ));
        }
        if self
            .offset
            .checked_add(size)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(t.invalid(
                &FileConfig::OFFSET,
                self.offset,
                format!("offset + size ({size}) is beyond the largest file size"),
            ));
        }
        // QEMU 10's rules: ROM needs a read-only file; a read-only file mapped
        // writable must be private (copy on write).
        match self.rom {
            OnOffAuto::On if !self.readonly => {
                return Err(Error::Refused(
                    "property 'rom' = 'on' is not supported with 'readonly' = 'off'".into(),
                ))
            }
            OnOffAuto::Off if self.readonly && t.common.share => return Err(Error::Refused(
                "property 'rom' = 'off' is incompatible with 'readonly' = 'on' and 'share' = 'on'"
                    .into(),
            )),
            _ => {}
        }
        Ok(Plan {
            len: size,
            page_size: page,
            hugetlb,
            existing_file: path.is_file(),
        })
    }

    fn map(&self, t: &Target<'_>, plan: &Plan) -> Result<Mapped> {
        let path = self.path_set()?;
        let size = plan.len;
        let mut created: Option<PathBuf> = None;
        let file = if path.is_dir() {
            temp_file(path, t.id).map_err(|e| open_error(path, &e))?
        } else {
            match OpenOptions::new()
                .read(true)
                .write(!self.readonly)
                .open(path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound && !self.readonly => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| open_error(path, &e))?;
                    created = Some(path.to_path_buf());
                    f
                }
                Err(e) => return Err(open_error(path, &e)),
            }
        };
        // Removes the created file if any step below fails; the mapping takes it over.
        let created = CreatedFile::new(created);
        // plan() refused offsets whose end overflows.
        let need = self.offset.saturating_add(size);
        let have = file.metadata().map_err(|e| open_error(path, &e))?.len();
        if have < need {
            // Like QEMU: grow an empty file, refuse to silently grow one with data in it.
            if have != 0 || self.readonly {
                return Err(t.invalid(
                    &crate::props::Common::SIZE,
                    size,
                    format!(
                        "{} holds {have} bytes, fewer than offset + size = {need}",
                        path.display()
                    ),
                ));
            }
            file.set_len(need).map_err(|e| {
                t.invalid(
                    &crate::props::Common::SIZE,
                    size,
                    format!(
                        "cannot grow {} to {need} bytes: {}",
                        path.display(),
                        sys::strerror(&e)
                    ),
                )
            })?;
        }
        let fd = OwnedFd::from(file);
        let align = if self.align == 0 {
            plan.page_size
        } else {
            self.align
        };
        let mut opts = MapOptions {
            shared: t.common.share,
            noreserve: !t.common.reserve,
            readonly: self.rom_on(),
            // Like QEMU: persistence (MAP_SYNC) only for shared pmem; private pmem is
            // plain memory.
            sync: self.pmem && t.common.share,
            align: align as usize,
        };
        let mut notes = Vec::new();
        let map = match RawMapping::map(size as usize, Some(&fd), self.offset, opts) {
            Err(e) if opts.sync && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // QEMU 10 maps a non-DAX file anyway, with a deprecation warning.
                notes.push(format!(
                    "requesting persistence across crashes for backend file {} failed. \
                     Proceeding without persistence, data might become corrupted in case of \
                     host crash.",
                    path.display()
                ));
                notes.push("Using non DAX backing file with 'pmem=on' option is deprecated".into());
                opts.sync = false;
                RawMapping::map(size as usize, Some(&fd), self.offset, opts)
            }
            r => r,
        }
        .map_err(|e| t.map_failed(&e))?;
        Ok(Mapped {
            map,
            fd: Some(fd),
            fd_offset: self.offset,
            created_file: created,
            notes,
            // A descriptor opened read-only cannot truncate; any other can, and the
            // kernel seals only memfds.
            fd_size: if self.readonly {
                FdSize::Fixed
            } else {
                FdSize::Unsealable
            },
        })
    }

    fn writable(&self) -> bool {
        !self.rom_on()
    }

    fn settle(&mut self) {
        // QEMU reads `rom` back as what it resolved to: auto follows readonly.
        self.rom = if self.rom_on() {
            OnOffAuto::On
        } else {
            OnOffAuto::Off
        };
    }

    fn takes_ram(&self, common: &Common) -> bool {
        // A private mapping's written pages are anonymous; a shared one's live in the
        // page cache of the file, written back unless the file is on tmpfs. A file
        // system that cannot be read counts as not holding RAM (nothing refused).
        !common.share
            || super::statfs_of(&self.mem_path).is_ok_and(|fs| fs.magic == sys::TMPFS_MAGIC)
    }

    fn path(&self) -> Option<&Path> {
        self.path_set().ok()
    }

    fn on_delete(&self, mapped: &Mapped) {
        if self.discard_data {
            if let Some(fd) = mapped.fd.as_ref() {
                // Best effort like QEMU: the memory goes away regardless.
                let _ = sys::punch_hole(fd, mapped.fd_offset, mapped.map.len() as u64);
            }
        }
    }
}

/// Makes a file in `dir` that no one else can open and unlinks it at once, so the
/// memory vanishes with the process however it ends. The name is built from bytes, so a
/// directory that is not UTF-8 is used as it is.
fn temp_file(dir: &Path, id: &str) -> std::io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let safe_id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    loop {
        let name = format!(
            "hostmem-{safe_id}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}
