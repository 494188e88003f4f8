//! Where a copy restore runs and whether it may: restored memory is placed and limited
//! as preallocated memory is (DESIGN.md §10), because a restore into a fresh backend
//! *is* its preallocation — it faults in every data page.
//!
//! - Threads run on the CPUs of the nodes the backend's policy binds or prefers, as
//!   prealloc's do (`Backend::job`): the copy's writes then fault pages in on the
//!   threads' own nodes, and the source reads come from the local page cache.
//! - Before any page is written, the bytes the restore will make resident are checked
//!   against the limits the backend counts against (its bound nodes or the host, the
//!   memory cgroup, the hugetlb cgroup), with the same rules and errors as a
//!   preallocation (`backend/room.rs`): a restore that does not fit is refused naming
//!   the limit, instead of being OOM-killed halfway.

use super::chain;
use super::image::Image;
use super::memory::Memory;
use super::{BlockFault, Result, SnapshotError};
use crate::backend::room;
use crate::limits::Snapshot;
use crate::{Backend, HostTopology};

/// The CPUs a restore into `backend` runs on: those of the nodes its policy names
/// (bound, preferred, interleaved), or any (empty) for the default policy.
pub(crate) fn cpus_for(backend: &Backend, host: &HostTopology) -> Vec<usize> {
    let c = &backend.config().common;
    if c.policy.takes_nodes() {
        host.cpus_of(&c.host_nodes)
    } else {
        Vec::new()
    }
}

/// Which units of the memory may hold data now, and the bytes a restore would fault in.
pub(crate) struct Resident {
    /// Per unit (a block of the chain's oldest image): the kernel says the memory under
    /// it may hold data (for units without data only when asked for; otherwise false).
    pub(crate) held: Vec<bool>,
    /// Bytes of the pages the data pieces touch, in units over memory that holds nothing
    /// yet.
    pub(crate) need: u64,
}

/// Bytes a restore of `chain` (a full image, then the diffs on it, newest last) would
/// fault in — for each unit (a block of the oldest image) over memory the kernel says
/// holds nothing yet, the pages its data pieces ([`chain::pieces`]) touch; a unit the
/// memory already holds a page of counts as resident (restoring into memory in use,
/// e.g. preallocated, adds nothing there) — keeping each unit's answer so a copy
/// restore asks the kernel once per unit (the answer holds while it runs: nobody else uses the memory then); with
/// `holes`, units without data are asked too (a copy restore clears those that hold
/// data).
pub(crate) fn resident(chain: &[&Image], mem: &Memory, holes: bool) -> Result<Resident> {
    let Some(oldest) = chain.first() else {
        return Ok(Resident {
            held: Vec::new(),
            need: 0,
        });
    };
    let h = oldest.header();
    let mut r = Resident {
        held: Vec::with_capacity(h.blocks as usize),
        need: 0,
    };
    for i in 0..h.blocks {
        let Some(unit) = h.block(i) else {
            r.held.push(false);
            continue;
        };
        let room = chain::data_pages(&chain::pieces(chain, &unit)?, mem.page_size());
        if room == 0 && !holes {
            r.held.push(false);
            continue;
        }
        let held = mem
            .may_hold_data(unit.backend_offset, unit.len)
            .map_err(|e| chain::fault_at(chain, unit.backend_offset, BlockFault::Read(e)))?;
        if !held {
            r.need += room;
        }
        r.held.push(held);
    }
    Ok(r)
}

/// Refuses a restore that would make `need` more bytes of `backend`'s memory resident
/// than the limits it counts against can give according to `snap`: the decision a
/// preallocation of `need` bytes gets, with its error (`Error::NodeMemoryShort` naming
/// the bound nodes, `HostMemoryShort`, `CgroupMemoryShort`, `HugetlbCgroupShort`).
/// A backend that ignores memory limits, or whose memory is page cache a disk can take
/// back (a shared file on disk), passes. Public so a caller can ask before restoring,
/// and so the decision can be checked against chosen figures.
pub fn check_room(backend: &Backend, need: u64, snap: &Snapshot) -> Result<()> {
    allocated(backend)?;
    room::check_more(backend, need, snap).map_err(SnapshotError::Backend)
}

/// [`check_room`], and the watch a copy restore's writes then ask before each block:
/// the limits re-read as they are during a preallocation, so another process taking
/// the room between the check and the last block stops the restore at the edge, with
/// the error a preallocation stopped there gets, instead of an OOM kill.
pub(crate) fn watch_room(backend: &Backend, need: u64, snap: Snapshot) -> Result<room::Guard> {
    allocated(backend)?;
    room::Guard::for_more(backend, need, snap).map_err(SnapshotError::Backend)
}

fn allocated(backend: &Backend) -> Result<()> {
    match backend.page_size() {
        Some(_) => Ok(()),
        None => Err(SnapshotError::Mismatch(format!(
            "'{}' is not allocated",
            backend.id()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::restore::{restore_from, RestoreOptions};
    use super::super::save::{save, SaveOptions};
    use super::*;
    use crate::testing::{rss_at, scratch_cgroup};
    use crate::{Error, Kind, NodeSet, Policy, Progress};

    const MIB: u64 = 1 << 20;

    /// Node 0 with `node` bytes available, the host with plenty, no cgroup limit.
    fn short_node(node: u64) -> Snapshot {
        crate::testing::limits(node, None)
    }

    #[test]
    fn restore_beyond_the_bound_nodes_room_is_refused_before_any_page() {
        let dir = std::env::temp_dir().join(format!("hostmem-place-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem.img");
        let memfd = |id: &str, bound: bool| {
            let b = Backend::builder(Kind::Memfd, id).size(16 * MIB);
            let b = if bound {
                b.policy(Policy::Bind).host_nodes(NodeSet::from_iter([0]))
            } else {
                b
            };
            b.create().unwrap()
        };
        let src = memfd("src", false);
        src.hold()
            .unwrap()
            .fill(2 * MIB as usize, 8 * MIB as usize, 0x5a)
            .unwrap();
        save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
        let image = Image::open(&path).unwrap();
        let dst = memfd("dst", true);
        let limits = short_node(4 * MIB);
        let opts = RestoreOptions::default();
        let r = restore_from(&image, &[], &dst, &opts, &Progress::new(), Some(&limits));
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Err(SnapshotError::Backend(e @ Error::NodeMemoryShort { .. })) => {
                let text = e.to_string();
                assert!(text.contains("node 0") && text.contains("8 MiB"), "{text}");
            }
            other => panic!("8 MiB restored onto a node with 4 MiB: {other:?}"),
        }
        assert_eq!(
            rss_at(dst.host_addr().unwrap()),
            0,
            "the refused restore made pages resident"
        );
        // With room, the same restore goes ahead: the refusal was the limit's.
        let room = short_node(64 * MIB);
        let r = restore_from(&image, &[], &dst, &opts, &Progress::new(), Some(&room)).unwrap();
        assert_eq!(r.data_bytes, 8 * MIB);
    }

    #[test]
    fn a_restore_whose_room_is_taken_after_the_check_stops_at_the_watched_limit() {
        let dir = std::env::temp_dir().join(format!("hostmem-place-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem.img");
        let src = Backend::builder(Kind::Memfd, "src")
            .size(16 * MIB)
            .create()
            .unwrap();
        src.hold()
            .unwrap()
            .fill(2 * MIB as usize, 8 * MIB as usize, 0x5a)
            .unwrap();
        save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
        let image = Image::open(&path).unwrap();
        // The figures checked before say 1 GiB of room in the memory cgroup; its files,
        // which the watch reads before each block, say 1 MiB: less than one block.
        let mut limits = short_node(1 << 40);
        limits.memory_cgroup = Ok(Some(scratch_cgroup(
            &dir.join("cg"),
            1 << 30,
            (1 << 30) - MIB,
        )));
        let dst = Backend::builder(Kind::Memfd, "dst")
            .size(16 * MIB)
            .create()
            .unwrap();
        let opts = RestoreOptions { threads: 1 };
        let r = restore_from(&image, &[], &dst, &opts, &Progress::new(), Some(&limits));
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Err(SnapshotError::Backend(e @ Error::CgroupMemoryShort { .. })) => {
                let text = e.to_string();
                assert!(text.contains("/scratch"), "{text}");
            }
            other => panic!("a restore past the watched cgroup: {other:?}"),
        }
        assert_eq!(
            rss_at(dst.host_addr().unwrap()),
            0,
            "smaps Rss: the stopped restore wrote a block past the limit"
        );
    }
}
