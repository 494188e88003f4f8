//! A plug stopped by a watched limit. The limit is a scratch cgroup whose files say
//! less room than the figures the plug was checked against (another process took it
//! between the check and the preallocation): the watch must stop the plug at its
//! first step, give back what the range held, and name the cgroup. What the test reads
//! back is the kernel's (smaps Rss of the mapping, the bytes of the block plugged
//! before). A stop in the middle of a run is the watch's own tests' (limits/watch.rs)
//! and the guest suite's (another process eating a node during a preallocation).

use super::Blocks;
use crate::error::Error;
use crate::limits::{CgroupLimit, Snapshot};
use crate::testing::{self, rss_at, scratch_cgroup};
use crate::{Backend, Kind};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The host and node 0 with plenty of room, and the memory cgroup `cgroup`.
fn limits(cgroup: Option<CgroupLimit>) -> Snapshot {
    testing::limits(1 << 40, cgroup)
}

#[test]
fn a_plug_stopped_at_a_watched_limit_gives_its_blocks_back_and_names_the_cgroup() {
    let dir = std::env::temp_dir().join(format!("hostmem-plug-watch-{}", std::process::id()));
    // The files say 8 MiB of room; the figures checked before say 1 GiB.
    let cgroup = scratch_cgroup(&dir, GIB, GIB - 8 * MIB);
    let b = Backend::builder(Kind::Ram, "watched")
        .size(128 * MIB)
        .reserve(false)
        .prealloc_threads(1)
        .create()
        .unwrap();
    let start = b.host_addr().unwrap();
    let mut blocks = Blocks::new(&b, 2 * MIB).unwrap();
    blocks.plug_with(0..2 * MIB, Some(limits(None))).unwrap();
    let mem = blocks.memory().clone();
    mem.fill(0, 4096, 0x6b).unwrap();
    // Blocks 1 and 2 hold pages without being plugged (a guest touched them).
    mem.fill(2 * MIB as usize, 4 * MIB as usize, 1).unwrap();
    assert_eq!(rss_at(start), 6 * MIB, "smaps Rss before the plug");
    let r = blocks.plug_with(2 * MIB..66 * MIB, Some(limits(Some(cgroup))));
    let _ = std::fs::remove_dir_all(&dir);
    let e = r.unwrap_err();
    let text = e.to_string();
    match &e {
        Error::CgroupMemoryShort { cgroup, short, .. } => {
            assert_eq!(cgroup.cgroup, "/scratch", "{text}");
            assert_eq!(short.stopped_after, Some(0), "{text}");
            assert_eq!(short.available, 8 * MIB, "{text}");
        }
        _ => panic!("not stopped at the cgroup: {text}"),
    }
    assert!(text.contains("/scratch"), "{text}");
    assert_eq!(
        rss_at(start),
        2 * MIB,
        "smaps Rss: only the block plugged before"
    );
    assert_eq!(blocks.plugged(), vec![0..2 * MIB]);
    let mut back = [0u8; 4096];
    mem.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0x6b), "block 0 kept its bytes");
}
