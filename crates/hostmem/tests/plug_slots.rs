//! KVM memory slots following plugged blocks (`vmm::SlotLayout`, `vmm::KvmSlots`),
//! checked by asking KVM itself: a registered slot has a dirty log
//! (KVM_GET_DIRTY_LOG), a removed one is ENOENT; a slot's guest range is KVM's when a
//! probe slot overlapping it is refused (EEXIST) and free when the probe is taken.
//!
//! Needs /dev/kvm (this host has it, without the means to boot a guest).
#![cfg(feature = "kvm")]

mod common;

use std::sync::Arc;

use common::{GIB, MIB};
use hostmem::plug::Blocks;
use hostmem::vm_memory::GuestAddress;
use hostmem::vmm::{KvmSlot, KvmSlots, SlotLayout};
use hostmem::{Backend, Kind};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::{Kvm, VmFd};

const SLOT: u64 = 128 * MIB;
const BASE: u64 = 4 * GIB;
const FIRST: u32 = 10;

/// Which of slots 10..14 KVM has a dirty log for (Ok) or says ENOENT about.
fn kvm_slots(vm: &VmFd) -> Vec<u32> {
    (FIRST..FIRST + 4)
        .filter(|&s| match vm.get_dirty_log(s, SLOT as usize) {
            Ok(_) => true,
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(e) => panic!("KVM_GET_DIRTY_LOG of slot {s}: {e}"),
        })
        .collect()
}

/// Whether KVM holds guest address `at` in a slot: a 2 MiB probe slot there is
/// refused with EEXIST (taken: deleted again at once otherwise).
fn kvm_holds(vm: &VmFd, probe: &Backend, at: u64) -> bool {
    let region = probe
        .guest_region::<()>(0, 2 * MIB, GuestAddress(at))
        .unwrap();
    match KvmSlot::new(vm, 99, 0, Arc::new(region)) {
        Ok(_) => false,
        Err(e) if e.errno() == libc::EEXIST => true,
        Err(e) => panic!("probe slot at {at:#x}: {e}"),
    }
}

#[test]
fn kvm_slots_are_registered_as_blocks_plug_and_removed_when_wholly_unplugged() {
    let kvm = Kvm::new().expect("/dev/kvm is needed for this test (open failed)");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let b = Backend::builder(Kind::Memfd, "dev")
        .size(4 * SLOT)
        .reserve(false)
        .create()
        .unwrap();
    let probe = Backend::builder(Kind::Ram, "probe")
        .size(2 * MIB)
        .create()
        .unwrap();
    let mut blocks = Blocks::new(&b, 2 * MIB).unwrap();
    let layout = SlotLayout::new(4 * SLOT, 2 * MIB, SLOT, GuestAddress(BASE), FIRST).unwrap();
    let mut slots: KvmSlots<&VmFd> = KvmSlots::new(&vm, layout, KVM_MEM_LOG_DIRTY_PAGES);
    let at = |slot: u64| BASE + slot * SLOT;

    blocks.plug(0..2 * MIB).unwrap();
    blocks.plug(2 * SLOT + 4 * MIB..2 * SLOT + 8 * MIB).unwrap();
    let c = slots.sync(&b, &blocks.plugged()).unwrap();
    assert_eq!((c.register.len(), c.remove.len()), (2, 0));
    assert_eq!(kvm_slots(&vm), [10, 12], "KVM's slots after two plugs");
    assert!(kvm_holds(&vm, &probe, at(0)) && kvm_holds(&vm, &probe, at(3) - 2 * MIB));
    assert!(!kvm_holds(&vm, &probe, at(1)), "slot 11's range is free");

    // Unplugged under its live slot (no protection: the region covers it), slot 12
    // holds no plugged block any more and goes; slot 10 stays for its block.
    blocks
        .unplug(2 * SLOT + 4 * MIB..2 * SLOT + 8 * MIB, false)
        .unwrap();
    let c = slots.sync(&b, &blocks.plugged()).unwrap();
    assert_eq!((c.register.len(), c.remove.len()), (0, 1));
    assert_eq!(kvm_slots(&vm), [10], "KVM's slots after slot 12 emptied");
    assert!(
        !kvm_holds(&vm, &probe, at(2)),
        "slot 12's range is free again"
    );
    // Removed from KVM, its blocks can now be made inaccessible.
    blocks.unplug(2 * SLOT..3 * SLOT, true).unwrap();

    blocks.plug(0..4 * SLOT).unwrap();
    let c = slots.sync(&b, &blocks.plugged()).unwrap();
    assert_eq!(c.register.len(), 3);
    assert_eq!(kvm_slots(&vm), [10, 11, 12, 13], "everything plugged");
    assert_eq!(slots.registered(), [10, 11, 12, 13]);
    for s in 0..4 {
        assert!(
            kvm_holds(&vm, &probe, at(s) + SLOT / 2),
            "slot {s}'s middle"
        );
    }

    blocks.unplug(0..4 * SLOT, false).unwrap();
    let c = slots.sync(&b, &blocks.plugged()).unwrap();
    assert_eq!(c.remove.len(), 4);
    assert!(kvm_slots(&vm).is_empty(), "KVM has no slot left");
}
