//! A VMM's guest memory: dirty-tracked regions from split hostmem backends, given to
//! KVM as memory slots (KVM checks the host ranges and refuses overlapping guest
//! ranges itself), written through vm-memory, dirty bits read back.
//!
//! Needs /dev/kvm (this host has it, without the means to boot a guest); without it
//! the test fails, naming what is missing.

use std::sync::Arc;

use hostmem::vm_memory::bitmap::AtomicBitmap;
use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use hostmem::vmm::{guest_regions, KvmSlot, Memory, RegionSpec};
use hostmem::{Backend, Kind};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::{Kvm, VmFd};

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
        RegionSpec {
            backend: &memfd,
            offset: 0,
            len: 32 * MIB,
            guest_addr: GuestAddress(0),
        },
        RegionSpec {
            backend: &memfd,
            offset: 32 * MIB,
            len: 32 * MIB,
            guest_addr: GuestAddress(4 * GIB),
        },
        RegionSpec {
            backend: &ram,
            offset: 0,
            len: 16 * MIB,
            guest_addr: GuestAddress(8 * GIB),
        },
    ])
    .unwrap();
    let mem = Memory::from_arc_regions(regions.clone()).unwrap();
    let slots: Vec<KvmSlot<&VmFd, AtomicBitmap>> = regions
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
    let again = KvmSlot::new(&vm, 7, 0, Arc::clone(&regions[2])).unwrap();
    assert_eq!(again.slot(), 7);
    drop(again);
    drop((mem, regions));
    assert!(!memfd.is_in_use() && !ram.is_in_use());
}

/// A VMM that owns its VM (`Arc<VmFd>`, as Cloud Hypervisor holds its VM) keeps its
/// slots beside it, and switches KVM's dirty log on for a slot that exists: KVM itself
/// answers KVM_GET_DIRTY_LOG only while the slot logs (ENOENT otherwise).
#[test]
fn kvm_slots_live_beside_an_owned_vm_and_dirty_logging_switches_on_a_live_slot() {
    struct Vmm {
        vm: Arc<VmFd>,
        slots: Vec<KvmSlot<Arc<VmFd>>>,
    }
    let kvm = Kvm::new().expect("/dev/kvm is needed for this test (open failed)");
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    let ram = Backend::builder(Kind::Ram, "owned")
        .size(8 * MIB)
        .create()
        .unwrap();
    let region = Arc::new(ram.guest_region::<()>(0, 8 * MIB, GuestAddress(0)).unwrap());
    let mut vmm = Vmm {
        slots: vec![KvmSlot::new(Arc::clone(&vm), 0, 0, region).unwrap()],
        vm,
    };
    let enoent = rustix::io::Errno::NOENT.raw_os_error();
    assert_eq!(vmm.slots[0].slot(), 0);
    let e = vmm.slots[0].dirty_log().unwrap_err();
    assert_eq!(e.errno(), enoent, "no log before logging is on: {e}");
    vmm.slots[0].set_dirty_logging(true).unwrap();
    // Switching on what is on leaves it on.
    vmm.slots[0].set_dirty_logging(true).unwrap();
    assert_eq!(vmm.slots[0].flags(), KVM_MEM_LOG_DIRTY_PAGES);
    let log = vmm.slots[0].dirty_log().expect("KVM logs the slot now");
    assert_eq!(log.len(), (8 * MIB as usize / 4096).div_ceil(64));
    vmm.slots[0].set_dirty_logging(false).unwrap();
    let e = vmm.slots[0].dirty_log().unwrap_err();
    assert_eq!(e.errno(), enoent, "logging off again: {e}");
    assert!(ram.is_in_use(), "the slot holds the region");
    drop(vmm.slots);
    assert_eq!(Arc::strong_count(&vmm.vm), 1, "slots gave the VM back");
    assert!(!ram.is_in_use());
}
