//! Properties: each one declared once, in the group that stores it (the common ones in
//! `common`, a kind's own in that kind's file under `kind/`), with its name, type,
//! default, when it may change and a doc line. From that one declaration come the
//! name/value table ([`Prop`]), the typed field of the configuration, and the builder's
//! setter. See docs/design.md ("Adding a property").

mod common;
pub(crate) mod group;
#[cfg(feature = "json")]
pub mod json;
mod value;

use std::fmt;

pub use common::Common;
pub use value::{parse_bool, Lookup, OnOffAuto, PropType, PropValue, Resolver, Value};

use std::any::Any;

use crate::error::{Error, Result};

/// Machine-wide defaults (`-machine mem-merge=,dump-guest-core=`, `-mem-prealloc`):
/// a new backend's initial `merge`, `dump` and `prealloc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineDefaults {
    /// `-machine mem-merge=`: KSM may merge guest RAM (QEMU default on).
    pub merge: bool,
    /// `-machine dump-guest-core=`: guest RAM is in core dumps (QEMU default on).
    pub dump: bool,
    /// `-mem-prealloc`: preallocate every backend.
    pub prealloc: bool,
    /// Not QEMU's: every backend skips the memory limit checks
    /// (`Backend::set_ignore_memory_limits`).
    pub ignore_memory_limits: bool,
}

impl Default for MachineDefaults {
    fn default() -> Self {
        MachineDefaults {
            merge: true,
            dump: true,
            prealloc: false,
            ignore_memory_limits: false,
        }
    }
}

/// What happens when a property is set on a live (allocated) backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Live {
    /// Refused: the memory would have to be remade.
    Fixed,
    /// Takes effect at once (merge, dump, prealloc off→on, ...).
    Immediate,
    /// Placement: refused alone, changed with a rebind of policy and nodes together.
    Rebind,
}

/// One property: its name/value face, made by the declaration of its group.
pub struct Prop {
    /// QEMU's name (`host-nodes`).
    pub name: &'static str,
    /// The value type.
    pub ty: PropType,
    /// What setting it does to a live backend.
    pub live: Live,
    /// One line of help (as the declaration's doc comment has it: a leading space).
    pub doc: &'static str,
    /// Smallest value an integer property takes (QEMU refuses `size=0`).
    pub min: u64,
    /// Must be set before the backend is allocated (`size`, a file's `mem-path`).
    pub required: bool,
    pub(crate) get: fn(&dyn Settings) -> Option<PropValue>,
    pub(crate) put: fn(&mut dyn Settings, PropValue) -> Option<()>,
}

impl fmt::Debug for Prop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prop")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("live", &self.live)
            .finish()
    }
}

impl Prop {
    /// The one line of help, trimmed.
    pub fn description(&self) -> &'static str {
        self.doc.trim()
    }

    /// Reads this property of `cfg` (None where the kind does not have it).
    pub fn get(&self, cfg: &dyn Settings) -> Option<PropValue> {
        (self.get)(cfg)
    }

    /// Stores a typed value, checked against the type, the kind and the minimum.
    pub(crate) fn store(&self, cfg: &mut dyn Settings, value: PropValue) -> Result<()> {
        if let PropValue::Int(v) = value {
            if v < self.min {
                return Err(Error::ZeroValue {
                    prop: self.name,
                    kind: cfg.qom_type(),
                    value: v.to_string(),
                });
            }
        }
        (self.put)(cfg, value).ok_or(Error::BadType {
            prop: self.name.to_string(),
            expected: self.ty.expected(),
        })
    }
}

/// Where the property rows find their values: a backend's settings, the common part
/// and its kind's own. The settings type itself lives with the kinds
/// (`kind::Config`); the rows here only need these answers, so properties
/// know nothing of kinds.
pub trait Settings {
    /// The properties every kind has.
    fn common(&self) -> &Common;
    /// The same, writable.
    fn common_mut(&mut self) -> &mut Common;
    /// The kind's own group (`FileConfig`, ...), for a row to downcast to its group.
    fn kind_group(&self) -> &dyn Any;
    /// The same, writable.
    fn kind_group_mut(&mut self) -> &mut dyn Any;
    /// QEMU's type name of the kind, for errors.
    fn qom_type(&self) -> &'static str;
}

/// CPUs this process may run on: the default thread count.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU quota of this process's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) may
    /// lower the count below the CPUs it may run on.
    fn cpu_quota() -> bool {
        let read = |p| std::fs::read_to_string(p).unwrap_or_default();
        let v2 = read("/sys/fs/cgroup/cpu.max");
        let v1 = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
        !(v2.is_empty() || v2.starts_with("max")) || !(v1.is_empty() || v1.trim() == "-1")
    }
    #[test]
    fn default_threads_are_the_cpus_this_thread_may_run_on() {
        let cpus = crate::sys::allowed_cpus();
        let n = default_threads() as usize;
        assert!((1..=cpus.len()).contains(&n), "{n} threads, CPUs {cpus:?}");
        if !cpu_quota() {
            assert_eq!(n, cpus.len(), "sched_getaffinity: {cpus:?}");
        }
        std::thread::spawn(move || {
            crate::sys::set_thread_affinity(crate::sys::gettid(), &cpus[..1]).unwrap();
            assert_eq!(default_threads(), 1, "pinned to CPU {}", cpus[0]);
        })
        .join()
        .unwrap();
    }
}
