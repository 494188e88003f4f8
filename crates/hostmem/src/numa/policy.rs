//! NUMA memory policies: QEMU's four (`HostMemPolicy`) plus the kernel's newer ones.

use std::fmt;
use std::str::FromStr;

use super::NodeSet;
use crate::sys::mpol;

/// A backend's memory policy, by the names QEMU and hostmem accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Policy {
    /// The process's policy (usually local allocation). Takes no nodes.
    #[default]
    Default,
    /// Prefer the given node(s), fall back elsewhere. Several nodes mean
    /// MPOL_PREFERRED_MANY where the kernel has it.
    Preferred,
    /// Only the given nodes; allocation fails rather than spill.
    Bind,
    /// Round-robin over the given nodes, page by page.
    Interleave,
    /// MPOL_PREFERRED_MANY by name (Linux 5.15+).
    PreferredMany,
    /// MPOL_WEIGHTED_INTERLEAVE (Linux 6.9+), weights from
    /// /sys/kernel/mm/mempolicy/weighted_interleave.
    WeightedInterleave,
    /// MPOL_LOCAL: the node of the CPU that faults the page in. Takes no nodes.
    Local,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 7] = [
        Policy::Default,
        Policy::Preferred,
        Policy::Bind,
        Policy::Interleave,
        Policy::PreferredMany,
        Policy::WeightedInterleave,
        Policy::Local,
    ];

    /// The name in QEMU's and hostmem's syntax.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Default => "default",
            Policy::Preferred => "preferred",
            Policy::Bind => "bind",
            Policy::Interleave => "interleave",
            Policy::PreferredMany => "preferred-many",
            Policy::WeightedInterleave => "weighted-interleave",
            Policy::Local => "local",
        }
    }

    /// Whether the policy needs a node set (QEMU: all but default).
    pub fn takes_nodes(self) -> bool {
        !matches!(self, Policy::Default | Policy::Local)
    }

    /// The one rule about nodes every policy has: `default` and `local` take none, the
    /// others need some. QEMU's messages for QEMU's policies.
    pub fn check_nodes(self, nodes: &NodeSet) -> Result<(), PolicyNodesError> {
        match (self.takes_nodes(), nodes.is_empty()) {
            (false, false) if self == Policy::Default => Err(PolicyNodesError::WithDefault),
            (false, false) => Err(PolicyNodesError::NotTaken(self)),
            (true, true) => Err(PolicyNodesError::Missing(self)),
            _ => Ok(()),
        }
    }

    /// Whether pages must come from the given nodes only (prealloc threads and huge
    /// page pools are then the nodes').
    pub fn is_strict(self) -> bool {
        self == Policy::Bind
    }

    /// Oldest kernel (major, minor) whose mbind accepts this policy.
    pub fn min_kernel(self) -> (u32, u32) {
        match self {
            Policy::PreferredMany => (5, 15),
            Policy::WeightedInterleave => (6, 9),
            Policy::Local => (3, 8),
            _ => (2, 6),
        }
    }

    /// The mbind mode for this policy over `node_count` nodes, on a kernel that has
    /// MPOL_PREFERRED_MANY or not (probed: `Features::preferred_many`).
    pub(crate) fn kernel_mode(self, node_count: usize, preferred_many: bool) -> i32 {
        match self {
            Policy::Default => mpol::DEFAULT,
            Policy::Preferred if node_count > 1 && preferred_many => mpol::PREFERRED_MANY,
            Policy::Preferred => mpol::PREFERRED,
            Policy::Bind => mpol::BIND,
            Policy::Interleave => mpol::INTERLEAVE,
            Policy::PreferredMany => mpol::PREFERRED_MANY,
            Policy::WeightedInterleave => mpol::WEIGHTED_INTERLEAVE,
            Policy::Local => mpol::LOCAL,
        }
    }
}

/// A memory policy mode as the kernel reports it (get_mempolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelMode {
    /// MPOL_DEFAULT.
    Default,
    /// MPOL_PREFERRED.
    Preferred,
    /// MPOL_BIND.
    Bind,
    /// MPOL_INTERLEAVE.
    Interleave,
    /// MPOL_LOCAL.
    Local,
    /// MPOL_PREFERRED_MANY.
    PreferredMany,
    /// MPOL_WEIGHTED_INTERLEAVE.
    WeightedInterleave,
    /// A mode newer than this library.
    Other(i32),
}

impl KernelMode {
    pub(crate) fn from_raw(mode: i32) -> KernelMode {
        match mode {
            mpol::DEFAULT => KernelMode::Default,
            mpol::PREFERRED => KernelMode::Preferred,
            mpol::BIND => KernelMode::Bind,
            mpol::INTERLEAVE => KernelMode::Interleave,
            mpol::LOCAL => KernelMode::Local,
            mpol::PREFERRED_MANY => KernelMode::PreferredMany,
            mpol::WEIGHTED_INTERLEAVE => KernelMode::WeightedInterleave,
            other => KernelMode::Other(other),
        }
    }

    /// The kernel's name for the mode, as numa_maps prints it.
    pub fn name(self) -> &'static str {
        match self {
            KernelMode::Default => "default",
            KernelMode::Preferred => "prefer",
            KernelMode::Bind => "bind",
            KernelMode::Interleave => "interleave",
            KernelMode::Local => "local",
            KernelMode::PreferredMany => "prefer (many)",
            KernelMode::WeightedInterleave => "weighted interleave",
            KernelMode::Other(_) => "unknown",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name was not a policy; carries the name for QEMU's "does not accept value" text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_with_several_nodes_is_preferred_many_on_new_kernels() {
        assert_eq!(Policy::Preferred.kernel_mode(2, true), mpol::PREFERRED_MANY);
        assert_eq!(Policy::Preferred.kernel_mode(2, false), mpol::PREFERRED);
        assert_eq!(Policy::Preferred.kernel_mode(1, true), mpol::PREFERRED);
    }

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        assert!("weird".parse::<Policy>().is_err());
    }

    #[test]
    fn which_policies_take_nodes_with_qemus_messages() {
        let none = NodeSet::new();
        let some = NodeSet::parse("0").unwrap();
        let err = |p: Policy, n: &NodeSet| p.check_nodes(n).unwrap_err().to_string();
        for p in [Policy::Default, Policy::Local] {
            assert!(!p.takes_nodes(), "{p}");
            assert!(p.check_nodes(&none).is_ok(), "{p}");
        }
        assert_eq!(
            err(Policy::Default, &some),
            "host-nodes must be empty for policy default, or you should explicitly \
             specify a policy other than default"
        );
        assert_eq!(
            err(Policy::Local, &some),
            "host-nodes must be empty for policy local"
        );
        for p in Policy::ALL.into_iter().filter(|p| p.takes_nodes()) {
            assert!(p.check_nodes(&some).is_ok(), "{p}");
            assert_eq!(
                err(p, &none),
                format!("host-nodes must be set for policy {p}")
            );
        }
        assert_eq!(Policy::ALL.iter().filter(|p| p.takes_nodes()).count(), 5);
    }

    #[test]
    fn only_bind_is_strict() {
        let strict: Vec<Policy> = Policy::ALL.into_iter().filter(|p| p.is_strict()).collect();
        assert_eq!(strict, [Policy::Bind]);
    }

    #[test]
    fn oldest_kernels() {
        let v: Vec<(u32, u32)> = Policy::ALL.iter().map(|p| p.min_kernel()).collect();
        // default, preferred, bind, interleave, preferred-many, weighted-interleave, local
        assert_eq!(v, [(2, 6), (2, 6), (2, 6), (2, 6), (5, 15), (6, 9), (3, 8)]);
    }

    #[test]
    fn kernel_modes_by_numa_maps_names() {
        let names: Vec<&str> = [
            mpol::DEFAULT,
            mpol::PREFERRED,
            mpol::BIND,
            mpol::INTERLEAVE,
            mpol::LOCAL,
            mpol::PREFERRED_MANY,
            mpol::WEIGHTED_INTERLEAVE,
            99,
        ]
        .into_iter()
        .map(|m| KernelMode::from_raw(m).name())
        .collect();
        assert_eq!(
            names,
            [
                "default",
                "prefer",
                "bind",
                "interleave",
                "local",
                "prefer (many)",
                "weighted interleave",
                "unknown"
            ]
        );
        assert_eq!(KernelMode::from_raw(99), KernelMode::Other(99));
        assert_eq!(
            Policy::WeightedInterleave.to_string(),
            "weighted-interleave"
        );
    }
}

/// A policy and a node set that do not go together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyNodesError {
    /// Policy `default` was given host-nodes (QEMU's words).
    #[error("host-nodes must be empty for policy default, or you should explicitly specify a policy other than default")]
    WithDefault,
    /// A policy that places memory on nodes (preferred, bind, interleave, ...) has an
    /// empty host-nodes (QEMU's words).
    #[error("host-nodes must be set for policy {0}")]
    Missing(Policy),
    /// A policy other than `default` that takes no nodes (`local`) was given host-nodes.
    #[error("host-nodes must be empty for policy {0}")]
    NotTaken(Policy),
}
