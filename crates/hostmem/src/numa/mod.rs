//! NUMA: node sets, policies and the host's topology.

mod nodeset;
mod policy;
pub mod topology;

pub use nodeset::{NodeListError, NodeSet, MAX_NODES};
pub use policy::{KernelMode, Policy, PolicyNodesError, UnknownPolicy};
pub use topology::{Features, HostTopology, HugePool, NodeInfo};
