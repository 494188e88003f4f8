//! `memory-backend-file`: a file used as is, created if missing, or a directory in which
//! an unlinked temp file is made. The page size is the file system's (hugetlbfs block
//! size), so hugetlbfs files give huge pages.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{fs_page_size, invalid, map_failed, CreatedFile, Mapped, Plan};
use crate::error::{Error, Result};
use crate::props::{Config, Kind, OnOffAuto};
use crate::size::format_size;
use crate::sys::{MapOptions, RawMapping};

fn open_error(path: &Path, e: &std::io::Error) -> Error {
    Error::OpenBackingStore {
        path: path.to_path_buf(),
        reason: crate::sys::strerror(e),
    }
}

pub fn plan(id: &str, cfg: &Config) -> Result<Plan> {
    let path = cfg.mem_path.as_deref().ok_or(Error::Missing("mem-path"))?;
    let size = cfg.size.unwrap_or(0);
    let (page, hugetlb) = fs_page_size(path).map_err(|e| open_error(path, &e))?;
    let bad = |prop, value: u64, why: String| invalid(Kind::File, id, prop, value, why);
    if !size.is_multiple_of(page) {
        return Err(bad(
            "size",
            size,
            format!(
                "must be a multiple of the page size {} of {}",
                format_size(page),
                path.display()
            ),
        ));
    }
    if cfg.align != 0 && (!cfg.align.is_power_of_two() || !cfg.align.is_multiple_of(page)) {
        return Err(bad(
            "align",
            cfg.align,
            format!(
                "must be a power of two and a multiple of the page size {}",
                format_size(page)
            ),
        ));
    }
    if !cfg.offset.is_multiple_of(page) {
        return Err(bad(
            "offset",
            cfg.offset,
            format!("must be a multiple of the page size {}", format_size(page)),
        ));
    }
    if cfg.rom == OnOffAuto::On && !cfg.readonly && cfg.share {
        return Err(invalid(
            Kind::File,
            id,
            "rom",
            "on",
            "a shared writable file cannot be ROM: set readonly=on or share=off",
        ));
    }
    if cfg.pmem && !cfg.share {
        return Err(invalid(
            Kind::File,
            id,
            "pmem",
            "on",
            "persistent memory needs share=on",
        ));
    }
    let existing_file = path.is_file();
    Ok(Plan {
        page_size: page,
        hugetlb,
        existing_file,
    })
}

/// Makes a file in `dir` that no one else can open and unlinks it at once, so the
/// memory vanishes with the process however it ends.
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
        let path = dir.join(name);
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

pub fn map(id: &str, cfg: &Config, plan: &Plan) -> Result<Mapped> {
    let path = cfg.mem_path.clone().ok_or(Error::Missing("mem-path"))?;
    let size = cfg.size.unwrap_or(0);
    let mut created: Option<PathBuf> = None;
    let file = if path.is_dir() {
        temp_file(&path, id).map_err(|e| open_error(&path, &e))?
    } else {
        match OpenOptions::new()
            .read(true)
            .write(!cfg.readonly)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && !cfg.readonly => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| open_error(&path, &e))?;
                created = Some(path.clone());
                f
            }
            Err(e) => return Err(open_error(&path, &e)),
        }
    };
    // Removes the created file if any step below fails; the mapping takes it over.
    let created = CreatedFile::new(created);
    let need = cfg.offset + size;
    let have = file.metadata().map_err(|e| open_error(&path, &e))?.len();
    if have < need {
        // Like QEMU: grow an empty file, refuse to silently grow one with data in it.
        if have != 0 || cfg.readonly {
            return Err(invalid(
                Kind::File,
                id,
                "size",
                size,
                format!(
                    "{} holds {have} bytes, fewer than offset + size = {need}",
                    path.display()
                ),
            ));
        }
        file.set_len(need).map_err(|e| {
            invalid(
                Kind::File,
                id,
                "size",
                size,
                format!(
                    "cannot grow {} to {need} bytes: {}",
                    path.display(),
                    crate::sys::strerror(&e)
                ),
            )
        })?;
    }
    let fd = OwnedFd::from(file);
    let align = if cfg.align == 0 {
        plan.page_size
    } else {
        cfg.align
    };
    let opts = MapOptions {
        shared: cfg.share,
        noreserve: !cfg.reserve,
        readonly: cfg.readonly,
        sync: cfg.pmem,
        align: align as usize,
    };
    let map = RawMapping::map(size as usize, Some(&fd), cfg.offset, opts).map_err(|e| {
        if cfg.pmem && e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            invalid(
                Kind::File,
                id,
                "pmem",
                "on",
                format!(
                    "{} is not on a DAX file system (MAP_SYNC refused)",
                    path.display()
                ),
            )
        } else {
            map_failed(Kind::File, id, &e)
        }
    })?;
    Ok(Mapped {
        map,
        fd: Some(fd),
        fd_offset: cfg.offset,
        created_file: created,
    })
}
