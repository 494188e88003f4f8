//! A VMM's guest memory: dirty-tracked regions from split hostmem backends, given to
//! KVM as memory slots (KVM checks the host ranges and refuses overlapping guest
//! ranges itself), written through vm-memory, dirty bits read back.
//!
//! Needs /dev/kvm (this host has it, without the means to boot a guest); without it
//! the test fails, naming what is missing.

use std::sync::Arc;

use hostmem::vm_memory::bitmap::AtomicBitmap;
use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use hostmem::vmm::{guest_regions, KvmSlot, Memory};
use hostmem::{Backend, Kind};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::Kvm;

use crate::common::{GIB, MIB};

#[test]
fn kvm_takes_split_backends_as_dirty_logged_slots_and_vm_memory_tracks_writes() {
    let kvm = Kvm::new().expect("/dev/kvm is needed for this test (open failed)");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let memfd = Backend::builder(Kind::Memfd, "guest-mem")
        .size(64 * MIB)
        .create()
        .unwrap();
    let ram = Backend::builder(Kind::Ram, "guest-ram")
        .size(16 * MIB)
        .create()
        .unwrap();
    let regions = guest_regions::<AtomicBitmap>(&[
        (&memfd, 0, 32 * MIB, GuestAddress(0)),
        (&memfd, 32 * MIB, 32 * MIB, GuestAddress(4 * GIB)),
        (&ram, 0, 16 * MIB, GuestAddress(8 * GIB)),
    ])
    .unwrap();
    let mem = Memory::from_arc_regions(regions.clone()).unwrap();
    let slots: Vec<KvmSlot<'_, AtomicBitmap>> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            KvmSlot::new(&vm, i as u32, KVM_MEM_LOG_DIRTY_PAGES, Arc::clone(r))
                .unwrap_or_else(|e| panic!("KVM refused slot {i}: {e}"))
        })
        .collect();
    // KVM itself refuses a slot over guest addresses another slot has.
    let stray = Backend::builder(Kind::Ram, "stray")
        .size(2 * MIB)
        .create()
        .unwrap();
    let overlapping = stray
        .guest_region::<AtomicBitmap>(0, 2 * MIB, GuestAddress(4 * GIB))
        .unwrap();
    let e = KvmSlot::new(&vm, 9, 0, Arc::new(overlapping)).unwrap_err();
    assert_eq!(e.errno(), rustix::io::Errno::EXIST.raw_os_error(), "{e}");

    // The VMM writes (a kernel load, a virtio used ring) through vm-memory.
    mem.write_slice(b"boot", GuestAddress(0x7000)).unwrap();
    mem.write_slice(b"ring", GuestAddress(4 * GIB + 0x10_0000))
        .unwrap();
    let tracked: Vec<Vec<usize>> = mem
        .iter()
        .map(|r| {
            let b = r.dirty_bitmap();
            (0..b.len()).filter(|&i| b.is_bit_set(i)).collect()
        })
        .collect();
    assert_eq!(tracked, [vec![7], vec![0x100], vec![]]);
    // No vCPU ran: KVM's own log of guest writes has a bit per page, all clear.
    for s in &slots {
        let log = s.dirty_log().expect("KVM_GET_DIRTY_LOG");
        let pages = s.region().dirty_bitmap().len();
        assert_eq!(log.len(), pages.div_ceil(64));
        assert!(log.iter().all(|w| *w == 0));
    }
    drop(slots);
    // Slots deleted: the same slot number takes another range again.
    let again = KvmSlot::new(&vm, 0, 0, Arc::clone(&regions[2])).unwrap();
    drop(again);
    drop((mem, regions));
    assert!(!memfd.is_in_use() && !ram.is_in_use());
}
