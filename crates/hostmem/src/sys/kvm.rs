//! Guest regions as KVM memory slots (cargo feature `kvm`).
//!
//! `KVM_SET_USER_MEMORY_REGION` is unsafe in kvm-ioctls because from then on the guest
//! writes to that host memory behind Rust's back: if the memory were unmapped and the
//! address reused by this process while the slot exists, the guest would write into
//! whatever lives there now. [`KvmSlot`] makes that impossible from safe code: it keeps
//! the region (and so the backend's mapping) alive for as long as the slot exists, and
//! deletes the slot when dropped. Leaking the slot (`mem::forget`) leaks the region
//! with it, so the memory is never unmapped under the guest.

use std::borrow::Borrow;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryRegion;

use crate::sys::vmm::Region;

/// A KVM memory slot over a hostmem guest region, deleted when dropped.
///
/// `V` is how the slot reaches the VM: `&VmFd` for a slot that lives in a scope, or an
/// owned or shared handle (`Arc<VmFd>`, as a VMM struct that owns its VM keeps it) so
/// the VMM can hold its slots beside the VM.
#[derive(Debug)]
pub struct KvmSlot<V: Borrow<VmFd>, B: Bitmap = ()> {
    vm: V,
    slot: u32,
    flags: u32,
    region: Arc<Region<B>>,
}

impl<V: Borrow<VmFd>, B: Bitmap> KvmSlot<V, B> {
    /// Makes `region` KVM memory slot `slot` of `vm` at the region's guest address,
    /// with `flags` (`KVM_MEM_LOG_DIRTY_PAGES`, ...). KVM's own checks apply: a slot
    /// number in use or a guest range overlapping another slot is refused (EEXIST).
    pub fn new(
        vm: V,
        slot: u32,
        flags: u32,
        region: Arc<Region<B>>,
    ) -> Result<KvmSlot<V, B>, kvm_ioctls::Error> {
        set_region(vm.borrow(), slot, flags, &region, region.len())?;
        Ok(KvmSlot {
            vm,
            slot,
            flags,
            region,
        })
    }

    /// Switches KVM's dirty logging of the slot on or off (`KVM_MEM_LOG_DIRTY_PAGES`,
    /// changed in place as KVM allows for a live slot: the guest keeps running on the
    /// same memory). Switching it on starts a fresh log.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), kvm_ioctls::Error> {
        let flags = if on {
            self.flags | KVM_MEM_LOG_DIRTY_PAGES
        } else {
            self.flags & !KVM_MEM_LOG_DIRTY_PAGES
        };
        set_region(
            self.vm.borrow(),
            self.slot,
            flags,
            &self.region,
            self.region.len(),
        )?;
        self.flags = flags;
        Ok(())
    }

    /// The slot's flags as KVM has them now.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The slot number.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The region behind the slot.
    pub fn region(&self) -> &Arc<Region<B>> {
        &self.region
    }

    /// KVM's dirty log of the slot (`KVM_GET_DIRTY_LOG`): one bit per base page the
    /// guest wrote since the last call; needs `KVM_MEM_LOG_DIRTY_PAGES`. Writes of the
    /// VMM itself through vm-memory are in the region's own bitmap instead.
    pub fn dirty_log(&self) -> Result<Vec<u64>, kvm_ioctls::Error> {
        self.vm
            .borrow()
            .get_dirty_log(self.slot, self.region.len() as usize)
    }
}

/// `KVM_SET_USER_MEMORY_REGION` of `slot` over `region` (`size` 0 deletes the slot).
fn set_region<B: Bitmap>(
    vm: &VmFd,
    slot: u32,
    flags: u32,
    region: &Region<B>,
    size: u64,
) -> Result<(), kvm_ioctls::Error> {
    let r = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: region.start_addr().0,
        memory_size: size,
        userspace_addr: region.host_addr() as u64,
    };
    // SAFETY: the range [userspace_addr, +memory_size) is the region's (memory_size is
    // its length, or 0 to delete the slot), mapped for as long as the region lives;
    // every KvmSlot owns an Arc of the region and deletes the slot in Drop before
    // releasing it, and if it is leaked the region is leaked with it, so the memory is
    // never unmapped while KVM may still write it. The guest's writes race only with
    // vm-memory's volatile accesses, never with Rust references to the memory.
    unsafe { vm.set_user_memory_region(r) }
}

impl<V: Borrow<VmFd>, B: Bitmap> Drop for KvmSlot<V, B> {
    fn drop(&mut self) {
        // A size of 0 deletes the slot: KVM stops using the memory. Should it fail,
        // the region is kept mapped for good rather than unmapped under a slot that
        // may still exist.
        if set_region(self.vm.borrow(), self.slot, self.flags, &self.region, 0).is_err() {
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}
