//! Guest regions as KVM memory slots (cargo feature `kvm`).
//!
//! `KVM_SET_USER_MEMORY_REGION` is unsafe in kvm-ioctls because from then on the guest
//! writes to that host memory behind Rust's back: if the memory were unmapped and the
//! address reused by this process while the slot exists, the guest would write into
//! whatever lives there now. [`KvmSlot`] makes that impossible from safe code: it keeps
//! the region (and so the backend's mapping) alive for as long as the slot exists, and
//! deletes the slot when dropped. Leaking the slot (`mem::forget`) leaks the region
//! with it, so the memory is never unmapped under the guest.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryRegion;

use crate::sys::vmm::Region;

/// A KVM memory slot over a hostmem guest region, deleted when dropped.
#[derive(Debug)]
pub struct KvmSlot<'vm, B: Bitmap = ()> {
    vm: &'vm VmFd,
    slot: u32,
    flags: u32,
    region: Arc<Region<B>>,
}

impl<'vm, B: Bitmap> KvmSlot<'vm, B> {
    /// Makes `region` KVM memory slot `slot` of `vm` at the region's guest address,
    /// with `flags` (`KVM_MEM_LOG_DIRTY_PAGES`, ...). KVM's own checks apply: a slot
    /// number in use or a guest range overlapping another slot is refused (EEXIST).
    pub fn new(
        vm: &'vm VmFd,
        slot: u32,
        flags: u32,
        region: Arc<Region<B>>,
    ) -> Result<KvmSlot<'vm, B>, kvm_ioctls::Error> {
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.host_addr() as u64,
        };
        // SAFETY: the range [userspace_addr, +memory_size) is the region's, which is
        // mapped for as long as the region lives; the returned KvmSlot owns an Arc of
        // the region and deletes the slot in Drop before releasing it, and if it is
        // leaked the region is leaked with it, so the memory is never unmapped while
        // KVM may still write it. The guest's writes race only with vm-memory's
        // volatile accesses, never with Rust references to the memory.
        unsafe { vm.set_user_memory_region(r) }?;
        Ok(KvmSlot {
            vm,
            slot,
            flags,
            region,
        })
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
        self.vm.get_dirty_log(self.slot, self.region.len() as usize)
    }
}

impl<B: Bitmap> Drop for KvmSlot<'_, B> {
    fn drop(&mut self) {
        let r = kvm_userspace_memory_region {
            slot: self.slot,
            flags: self.flags,
            guest_phys_addr: self.region.start_addr().0,
            memory_size: 0,
            userspace_addr: self.region.host_addr() as u64,
        };
        // SAFETY: a memory_size of 0 deletes the slot: KVM stops using the memory.
        // Should it fail, the region is kept mapped for good rather than unmapped under
        // a slot that may still exist.
        if unsafe { self.vm.set_user_memory_region(r) }.is_err() {
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}
