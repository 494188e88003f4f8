//! Which KVM memory slots memory that grows and shrinks block by block needs
//! (virtio-mem, `plug::Blocks`): a VMM cannot give KVM one slot per block (KVM allows
//! a few hundred to 32 Ki slots, and each costs lookup time and metadata), nor one slot
//! over the whole maximum (KVM's per-page metadata for a 1 TiB slot is ~2.5 GiB, held
//! however little is plugged: why RHEL turned on dynamic memslots). So the memory is
//! cut into slots of a fixed size (Firecracker: 128 MiB), a slot is registered as soon
//! as any of its blocks is plugged and removed once all of them are unplugged.
//!
//! [`SlotLayout`] says which slots, from the plugged ranges alone; [`KvmSlots`]
//! (feature `kvm`) applies it with [`KvmSlot`](crate::vmm::KvmSlot)s, whose regions
//! keep the memory mapped while KVM may write it.
//!
//! A registered slot may hold unplugged blocks (their memory given back, still
//! accessible: a guest touch refills them, as after a balloon's discard); unplug those
//! without `protect`, since a guest region cannot cover PROT_NONE memory. Once a slot
//! is removed its blocks can be unplugged again with `protect`, as Firecracker
//! mprotects wholly unplugged slots. Over huge pages without a reservation a region
//! needs every block plugged, so there the slot size is best the block size.

use std::ops::Range;

use vm_memory::GuestAddress;

use super::VmmError;

/// How one backend's memory is cut into KVM slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    len: u64,
    block: u64,
    slot: u64,
    guest_base: u64,
    first_slot: u32,
}

/// One slot of a layout: its number, the bytes of the backend it covers, and the
/// guest address they start at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSpan {
    /// The KVM slot number.
    pub slot: u32,
    /// Where the slot starts in the backend's memory.
    pub offset: u64,
    /// Its length (the slot size; the last slot may be shorter).
    pub len: u64,
    /// The guest physical address of `offset`.
    pub guest_addr: GuestAddress,
}

/// What to change in KVM for a plugged set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotChanges {
    /// Slots with a plugged block that are not registered: register them.
    pub register: Vec<SlotSpan>,
    /// Registered slots whose every block is unplugged: remove them.
    pub remove: Vec<SlotSpan>,
}

impl SlotLayout {
    /// `len` bytes of memory (a backend's, or the part a device uses) at guest address
    /// `guest_base`, plugged in blocks of `block` bytes, cut into slots of `slot` bytes
    /// (a multiple of the block; the last slot may be shorter) numbered from
    /// `first_slot`.
    pub fn new(
        len: u64,
        block: u64,
        slot: u64,
        guest_base: GuestAddress,
        first_slot: u32,
    ) -> Result<SlotLayout, VmmError> {
        let bad = |why: String| Err(VmmError::SlotLayout(why));
        if block == 0 || slot == 0 || len == 0 {
            return bad(format!(
                "length {len}, block {block} and slot {slot} must not be 0"
            ));
        }
        if !slot.is_multiple_of(block) || !len.is_multiple_of(block) {
            return bad(format!(
                "the slot size {slot:#x} and the length {len:#x} must be whole blocks of {block:#x}"
            ));
        }
        let count = len.div_ceil(slot);
        if guest_base.0.checked_add(len).is_none()
            || u64::from(first_slot) + count > u64::from(u32::MAX)
        {
            return bad(format!(
                "{count} slots from slot {first_slot} at {:#x} leave the guest address space or the slot numbers",
                guest_base.0
            ));
        }
        Ok(SlotLayout {
            len,
            block,
            slot,
            guest_base: guest_base.0,
            first_slot,
        })
    }

    /// How many slots the memory is cut into.
    pub fn count(&self) -> usize {
        self.len.div_ceil(self.slot) as usize
    }

    /// Slot `index` (0 is `first_slot`) of the layout.
    pub fn span(&self, index: usize) -> Option<SlotSpan> {
        let offset = (index as u64).checked_mul(self.slot)?;
        (offset < self.len).then(|| SlotSpan {
            slot: self.first_slot + index as u32,
            offset,
            len: self.slot.min(self.len - offset),
            guest_addr: GuestAddress(self.guest_base + offset),
        })
    }

    /// The slots that hold any byte of `plugged` (ranges of the memory, as
    /// `Blocks::plugged` gives them), in slot order.
    pub fn wanted(&self, plugged: &[Range<u64>]) -> Vec<SlotSpan> {
        let mut want = vec![false; self.count()];
        for r in plugged {
            let end = r.end.min(self.len);
            if r.start >= end {
                continue;
            }
            let (a, b) = (r.start / self.slot, (end - 1) / self.slot);
            want[a as usize..=b as usize].fill(true);
        }
        (0..want.len())
            .filter(|&i| want[i])
            .filter_map(|i| self.span(i))
            .collect()
    }

    /// What to register and remove to go from the `registered` slot numbers to the
    /// slots `plugged` needs.
    pub fn changes(&self, registered: &[u32], plugged: &[Range<u64>]) -> SlotChanges {
        let wanted = self.wanted(plugged);
        let register = wanted
            .iter()
            .filter(|s| !registered.contains(&s.slot))
            .copied()
            .collect();
        let remove = (0..self.count())
            .filter_map(|i| self.span(i))
            .filter(|s| registered.contains(&s.slot) && !wanted.contains(s))
            .collect();
        SlotChanges { register, remove }
    }
}

#[cfg(feature = "kvm")]
pub use apply::KvmSlots;

#[cfg(feature = "kvm")]
mod apply {
    use std::borrow::Borrow;
    use std::collections::BTreeMap;
    use std::ops::Range;
    use std::sync::Arc;

    use kvm_ioctls::VmFd;
    use vm_memory::bitmap::NewBitmap;

    use super::{SlotChanges, SlotLayout};
    use crate::vmm::{KvmSlot, VmmError};
    use crate::Backend;

    /// A [`SlotLayout`] applied to a VM: the [`KvmSlot`]s registered now, each over a
    /// guest region of its slot's range, with dirty bitmaps of type `B`.
    #[derive(Debug)]
    pub struct KvmSlots<V: Borrow<VmFd> + Clone, B: NewBitmap = ()> {
        vm: V,
        layout: SlotLayout,
        flags: u32,
        slots: BTreeMap<u32, KvmSlot<V, B>>,
    }

    impl<V: Borrow<VmFd> + Clone, B: NewBitmap> KvmSlots<V, B> {
        /// No slot registered yet; slots will be made with `flags`
        /// (`KVM_MEM_LOG_DIRTY_PAGES`, ...).
        pub fn new(vm: V, layout: SlotLayout, flags: u32) -> KvmSlots<V, B> {
            KvmSlots {
                vm,
                layout,
                flags,
                slots: BTreeMap::new(),
            }
        }

        /// Brings KVM to the slots `plugged` needs: removes the registered slots whose
        /// every block is unplugged (first, so their memory is no longer KVM's), then
        /// registers each slot with a plugged block over a region of `backend`. On an
        /// error the slots changed before it stay changed, and [`KvmSlots::registered`]
        /// says what KVM has.
        pub fn sync(
            &mut self,
            backend: &Backend,
            plugged: &[Range<u64>],
        ) -> Result<SlotChanges, VmmError> {
            let now: Vec<u32> = self.slots.keys().copied().collect();
            let changes = self.layout.changes(&now, plugged);
            for s in &changes.remove {
                // Dropping the slot deletes it in KVM; should KVM refuse, its region
                // stays mapped for good (`KvmSlot`'s rule), never unmapped under it.
                drop(self.slots.remove(&s.slot));
            }
            for s in &changes.register {
                let region = backend.guest_region::<B>(s.offset, s.len, s.guest_addr)?;
                let slot = KvmSlot::new(self.vm.clone(), s.slot, self.flags, Arc::new(region))
                    .map_err(|e| VmmError::Kvm {
                        slot: s.slot,
                        guest_addr: s.guest_addr.0,
                        source: std::io::Error::from_raw_os_error(e.errno()),
                    })?;
                self.slots.insert(s.slot, slot);
            }
            Ok(changes)
        }

        /// The slot numbers registered now, in order.
        pub fn registered(&self) -> Vec<u32> {
            self.slots.keys().copied().collect()
        }

        /// Registered slot `slot`, for its region and dirty log.
        pub fn slot(&self, slot: u32) -> Option<&KvmSlot<V, B>> {
            self.slots.get(&slot)
        }

        /// The layout applied.
        pub fn layout(&self) -> &SlotLayout {
            &self.layout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_slot_is_wanted_for_any_plugged_block_and_removed_when_wholly_unplugged() {
        // 400 MiB in 2 MiB blocks, 128 MiB slots 5..=8 (the last one 16 MiB).
        let l = SlotLayout::new(400 * MIB, 2 * MIB, 128 * MIB, GuestAddress(1 << 32), 5).unwrap();
        assert_eq!(l.count(), 4);
        assert_eq!(l.span(3).unwrap().len, 16 * MIB);
        assert_eq!(l.span(4), None);
        let plugged = [0..2 * MIB, 254 * MIB..258 * MIB, 398 * MIB..400 * MIB];
        let slots: Vec<u32> = l.wanted(&plugged).iter().map(|s| s.slot).collect();
        assert_eq!(slots, [5, 6, 7, 8], "a range across a slot edge wants both");
        let one = std::iter::once(130 * MIB..132 * MIB).collect::<Vec<_>>();
        let w = l.wanted(&one);
        assert_eq!(
            w,
            [SlotSpan {
                slot: 6,
                offset: 128 * MIB,
                len: 128 * MIB,
                guest_addr: GuestAddress((1 << 32) + 128 * MIB)
            }]
        );
        let c = l.changes(&[5, 6, 8], &[130 * MIB..132 * MIB, 300 * MIB..302 * MIB]);
        let nums = |v: &[SlotSpan]| v.iter().map(|s| s.slot).collect::<Vec<_>>();
        assert_eq!(nums(&c.register), [7]);
        assert_eq!(nums(&c.remove), [5, 8]);
    }

    #[test]
    fn layouts_of_part_blocks_or_beyond_the_address_space_are_refused() {
        let g = GuestAddress(0);
        assert!(SlotLayout::new(64 * MIB, 2 * MIB, 3 * MIB, g, 0).is_err());
        assert!(SlotLayout::new(65 * MIB, 2 * MIB, 4 * MIB, g, 0).is_err());
        assert!(SlotLayout::new(64 * MIB, 0, 4 * MIB, g, 0).is_err());
        assert!(SlotLayout::new(64 * MIB, 2 * MIB, 4 * MIB, GuestAddress(u64::MAX), 0).is_err());
        assert!(SlotLayout::new(64 * MIB, 2 * MIB, 4 * MIB, g, u32::MAX - 3).is_err());
        assert!(SlotLayout::new(64 * MIB, 2 * MIB, 4 * MIB, g, u32::MAX - 16).is_ok());
    }
}
