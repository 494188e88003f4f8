//! `memory-backend-ram`: anonymous memory, aligned for THP.

use super::{map_failed, CreatedFile, Mapped, THP_ALIGN};
use crate::error::Result;
use crate::props::{Config, Kind};
use crate::sys::{advice, MapOptions, RawMapping};

pub fn map(id: &str, cfg: &Config) -> Result<Mapped> {
    let size = cfg.size.unwrap_or(0) as usize;
    let opts = MapOptions {
        shared: cfg.share,
        noreserve: !cfg.reserve,
        align: THP_ALIGN,
        ..Default::default()
    };
    let map = RawMapping::map(size, None, 0, opts).map_err(|e| map_failed(Kind::Ram, id, &e))?;
    // THP is `madvise` on most hosts: without this hint guest RAM gets 4 KiB pages.
    // A kernel without THP refuses the advice; the memory works all the same.
    let _ = map.madvise(0, size, advice::HUGEPAGE);
    Ok(Mapped {
        map,
        fd: None,
        fd_offset: 0,
        created_file: CreatedFile::default(),
    })
}
