//! What the kernel holds of a backend's memory, block by block, for the plug and
//! discard tests: page tables (/proc/self/pagemap), smaps, the fd's data
//! (SEEK_DATA/SEEK_HOLE) and the huge page pool's free counter.

#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Mapped bytes of each block in this process's page tables (pagemap's present bit,
/// bit 63, per 4 KiB page).
pub fn mapped_per_block(start: usize, len: u64, block: u64) -> Vec<u64> {
    let mut f = File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start(start as u64 / 4096 * 8)).unwrap();
    let mut raw = vec![0u8; (len / 4096 * 8) as usize];
    f.read_exact(&mut raw).unwrap();
    raw.chunks(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()) >> 63)
        .collect::<Vec<_>>()
        .chunks((block / 4096) as usize)
        .map(|c| c.iter().sum::<u64>() * 4096)
        .collect()
}

/// Bytes of each block the file holds data for: SEEK_DATA/SEEK_HOLE walked over it.
pub fn file_data_per_block(file: &File, len: u64, block: u64) -> Vec<u64> {
    use rustix::fs::{seek, SeekFrom as S};
    let mut data = vec![0u64; (len / block) as usize];
    let mut at = 0;
    while at < len {
        let Ok(start) = seek(file, S::Data(at)) else {
            break; // ENXIO: no data past `at`
        };
        let end = seek(file, S::Hole(start)).unwrap().min(len);
        for b in start / block..end.div_ceil(block) {
            let (lo, hi) = ((b * block).max(start), ((b + 1) * block).min(end));
            data[b as usize] += hi - lo;
        }
        at = end;
    }
    data
}

/// The file a mapping at `start` maps, opened through /proc/self/map_files.
pub fn mapped_file(start: usize, len: u64) -> File {
    let end = start as u64 + len;
    File::open(format!("/proc/self/map_files/{start:x}-{end:x}")).unwrap()
}

/// Resident bytes of the mappings that start in [start, start+len), from smaps: `Rss`,
/// plus `Shared_Hugetlb` and `Private_Hugetlb`, where hugetlb pages are counted.
pub fn smaps_resident(start: usize, len: u64) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut inside, mut total) = (false, 0);
    for l in text.lines() {
        let mut words = l.split_whitespace();
        let head = words.next().unwrap_or("");
        if let Some((a, _)) = head.split_once('-').filter(|_| !head.ends_with(':')) {
            let a = u64::from_str_radix(a, 16).unwrap_or(u64::MAX);
            inside = a >= start as u64 && a < start as u64 + len;
        } else if inside && matches!(head, "Rss:" | "Shared_Hugetlb:" | "Private_Hugetlb:") {
            total += words.next().unwrap().parse::<u64>().unwrap() * 1024;
        }
    }
    total
}

pub fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
