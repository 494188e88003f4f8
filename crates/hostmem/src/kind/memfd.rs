//! `memory-backend-memfd`: a memfd, shared by default so other processes (vhost-user
//! back ends) can map the same memory through the fd; optionally hugetlb and sealed.

use std::fs::File;
use std::os::fd::OwnedFd;

use super::{invalid, map_failed, CreatedFile, Mapped, Plan};
use crate::error::Result;
use crate::numa::topology::{default_huge_page_size, huge_page_sizes};
use crate::props::{Config, Kind};
use crate::size::format_size;
use crate::sys::{self, memfd, MapOptions, RawMapping};

pub fn plan(id: &str, cfg: &Config) -> Result<Plan> {
    let size = cfg.size.unwrap_or(0);
    if !cfg.hugetlb {
        if cfg.hugetlbsize != 0 {
            return Err(invalid(
                Kind::Memfd,
                id,
                "hugetlbsize",
                cfg.hugetlbsize,
                "it needs hugetlb=on",
            ));
        }
        return Ok(Plan {
            page_size: sys::page_size() as u64,
            hugetlb: false,
            existing_file: false,
        });
    }
    let offered = huge_page_sizes();
    let page = if cfg.hugetlbsize == 0 {
        default_huge_page_size().unwrap_or(0)
    } else {
        cfg.hugetlbsize
    };
    if page == 0 || !offered.contains(&page) {
        let list: Vec<String> = offered.iter().map(|&s| format_size(s)).collect();
        let why = if list.is_empty() {
            "this host offers no huge pages".to_string()
        } else {
            format!("this host offers huge pages of {}", list.join(", "))
        };
        return Err(invalid(
            Kind::Memfd,
            id,
            "hugetlbsize",
            cfg.hugetlbsize,
            why,
        ));
    }
    if !size.is_multiple_of(page) {
        return Err(invalid(
            Kind::Memfd,
            id,
            "size",
            size,
            format!(
                "hugetlb memory must be a multiple of the huge page size {}",
                format_size(page)
            ),
        ));
    }
    Ok(Plan {
        page_size: page,
        hugetlb: true,
        existing_file: false,
    })
}

pub fn map(id: &str, cfg: &Config, plan: &Plan) -> Result<Mapped> {
    let size = cfg.size.unwrap_or(0);
    let mut flags = memfd::CLOEXEC;
    if cfg.seal {
        flags |= memfd::ALLOW_SEALING;
    }
    if plan.hugetlb {
        flags |= memfd::HUGETLB | (plan.page_size.trailing_zeros() << memfd::HUGE_SHIFT);
    }
    let fail = |e: std::io::Error| map_failed(Kind::Memfd, id, &e);
    let fd = sys::memfd_create("memory-backend-memfd", flags).map_err(fail)?;
    let file = File::from(fd);
    file.set_len(size).map_err(|e| {
        invalid(
            Kind::Memfd,
            id,
            "size",
            size,
            format!("failed to resize memfd: {}", sys::strerror(&e)),
        )
    })?;
    let fd = OwnedFd::from(file);
    if cfg.seal {
        sys::add_seals(
            &fd,
            memfd::SEAL_GROW | memfd::SEAL_SHRINK | memfd::SEAL_SEAL,
        )
        .map_err(fail)?;
    }
    let opts = MapOptions {
        shared: cfg.share,
        noreserve: !cfg.reserve,
        align: plan.page_size as usize,
        ..Default::default()
    };
    let map = RawMapping::map(size as usize, Some(&fd), 0, opts).map_err(fail)?;
    Ok(Mapped {
        map,
        fd: Some(fd),
        fd_offset: 0,
        created_file: CreatedFile::default(),
    })
}
