//! Helpers the library's unit tests share: the kernel's figure they check (smaps Rss of
//! one mapping) and chosen memory-limit figures to check against.

use crate::limits::{CgroupLimit, CgroupVersion, MemoryRoom, Snapshot, Watermarks};

/// smaps `Rss` of this process's mapping that starts at `start`, bytes.
pub(crate) fn rss_at(start: usize) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{start:x}-");
    let rss = text
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .find(|l| l.starts_with("Rss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .expect("the mapping is in smaps");
    rss * 1024
}

/// Node 0 with `node_free` bytes available, the host with plenty, and the memory
/// cgroup `cgroup` (None: no limit).
pub(crate) fn limits(node_free: u64, cgroup: Option<CgroupLimit>) -> Snapshot {
    let room = |free| MemoryRoom {
        total: 1 << 40,
        free,
        file: 0,
        slab_reclaimable: 0,
        reserve: 0,
    };
    Snapshot {
        nodes: vec![(0, Ok(room(node_free)))],
        host: Ok(room(1 << 40)),
        memory_cgroup: Ok(cgroup),
        hugetlb_cgroups: Vec::new(),
        marks: Watermarks::default(),
        uncounted: None,
        hints: Vec::new(),
    }
}

/// A cgroup v2 memory limit of `max` bytes in scratch directory `dir`, whose files say
/// `current` bytes are in use while the figures read before (the struct) say none: the
/// room another process took between the check and the work.
pub(crate) fn scratch_cgroup(dir: &std::path::Path, max: u64, current: u64) -> CgroupLimit {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("memory.max"), max.to_string()).unwrap();
    std::fs::write(dir.join("memory.current"), current.to_string()).unwrap();
    CgroupLimit {
        cgroup: "/scratch".into(),
        dir: dir.to_path_buf(),
        version: CgroupVersion::V2,
        max_file: "memory.max".into(),
        current_file: "memory.current".into(),
        max,
        current: 0,
    }
}
