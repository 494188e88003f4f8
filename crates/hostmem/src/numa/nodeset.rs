//! Sets of NUMA node ids, in the list syntax of QEMU and sysfs (`0-3`, `0,2`, `0-1,4`).

use std::collections::BTreeSet;
use std::fmt;

/// Node ids are bounded like the kernel's MAX_NUMNODES on distribution kernels (1024),
/// well past QEMU's 128.
pub const MAX_NODES: u32 = 1024;

/// A set of NUMA node ids, each below [`MAX_NODES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeSet(BTreeSet<u32>);

/// Why a node list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeListError {
    /// A node id at or past [`MAX_NODES`] (QEMU's wording).
    #[error("Invalid host-nodes value: {0}")]
    OutOfRange(u64),
    /// Text that is not ids and `lo-hi` ranges separated by `,` or `:`, or a range that
    /// runs backwards (`3-1`); holds the text, trimmed.
    #[error("'{0}' is not a node list (expected e.g. 0, 0-3 or 0,2)")]
    Syntax(String),
}

impl NodeSet {
    /// The empty set: no host-nodes, as policies `default` and `local` take.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node, refusing ids the kernel cannot have.
    pub fn insert(&mut self, node: u64) -> Result<(), NodeListError> {
        if node >= MAX_NODES as u64 {
            return Err(NodeListError::OutOfRange(node));
        }
        self.0.insert(node as u32);
        Ok(())
    }

    /// Parses `0-3`, `0,2`, `1-2,5` (sysfs lists; QEMU's `-object` forms `0-3` per key).
    pub fn parse(text: &str) -> Result<Self, NodeListError> {
        let mut set = NodeSet::new();
        set.extend_parse(text)?;
        Ok(set)
    }

    /// Adds the nodes of a list to this set (for repeated `host-nodes=` keys).
    pub fn extend_parse(&mut self, text: &str) -> Result<(), NodeListError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let syntax = || NodeListError::Syntax(text.to_string());
        for part in text.split([',', ':']) {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u64 = lo.parse().map_err(|_| syntax())?;
            let hi: u64 = hi.parse().map_err(|_| syntax())?;
            if lo > hi {
                return Err(syntax());
            }
            if hi >= MAX_NODES as u64 {
                return Err(NodeListError::OutOfRange(hi));
            }
            for n in lo..=hi {
                self.0.insert(n as u32);
            }
        }
        Ok(())
    }

    /// Whether node `node` is in the set.
    pub fn contains(&self, node: u32) -> bool {
        self.0.contains(&node)
    }

    /// Whether the set has no node (host-nodes unset).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of nodes in the set; on Linux 5.15+ a preferred policy over more than one
    /// becomes MPOL_PREFERRED_MANY.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The node ids, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The highest node id, which sizes the kernel nodemask; None when empty.
    pub fn highest(&self) -> Option<u32> {
        self.0.iter().next_back().copied()
    }

    /// The kernel's nodemask words and the `maxnode` argument for mbind: highest node
    /// + 2, because the kernel reads maxnode - 1 bits.
    pub fn to_mask(&self) -> (Vec<u64>, u64) {
        let Some(hi) = self.highest() else {
            return (Vec::new(), 0);
        };
        let mut mask = vec![0u64; hi as usize / 64 + 1];
        for n in self.iter() {
            mask[n as usize / 64] |= 1 << (n % 64);
        }
        (mask, hi as u64 + 2)
    }

    /// The set a kernel nodemask describes.
    pub fn from_mask(mask: &[u64]) -> Self {
        let mut set = NodeSet::new();
        for (w, word) in mask.iter().enumerate() {
            for b in 0..64 {
                if word & (1 << b) != 0 {
                    set.0.insert((w * 64 + b) as u32);
                }
            }
        }
        set
    }
}

impl FromIterator<u32> for NodeSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        NodeSet(iter.into_iter().filter(|&n| n < MAX_NODES).collect())
    }
}

/// Compact list form, `0-2,5`, as sysfs and numactl print it.
impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<u32> = self.iter().collect();
        let mut i = 0;
        let mut first = true;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j > i {
                write!(f, "{}-{}", v[i], v[j])?;
            } else {
                write!(f, "{}", v[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_and_sysfs_forms() {
        assert_eq!(
            NodeSet::parse("0-3").unwrap().iter().collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(NodeSet::parse("0,2").unwrap().to_string(), "0,2");
        assert_eq!(NodeSet::parse("1-2,5,6").unwrap().to_string(), "1-2,5-6");
        assert_eq!(NodeSet::parse("").unwrap(), NodeSet::new());
        assert_eq!(NodeSet::parse("1024"), Err(NodeListError::OutOfRange(1024)));
        assert!(matches!(
            NodeSet::parse("3-1"),
            Err(NodeListError::Syntax(_))
        ));
        assert!(matches!(NodeSet::parse("x"), Err(NodeListError::Syntax(_))));
    }

    #[test]
    fn mask_has_room_for_the_kernel_off_by_one() {
        let (mask, maxnode) = NodeSet::parse("0,65").unwrap().to_mask();
        assert_eq!(mask, vec![1, 2]);
        assert_eq!(maxnode, 67);
        assert_eq!(NodeSet::from_mask(&mask).to_string(), "0,65");
    }

    #[test]
    fn mask_words_and_bits_of_high_nodes() {
        let set = NodeSet::parse("0,3,69,200").unwrap();
        let (mask, maxnode) = set.to_mask();
        assert_eq!(mask, vec![0b1001, 1 << 5, 0, 1 << 8]);
        assert_eq!(maxnode, 202);
        assert_eq!(NodeSet::from_mask(&mask), set);
        let (one, maxnode) = NodeSet::parse("64").unwrap().to_mask();
        assert_eq!((one, maxnode), (vec![0, 1], 66));
        assert_eq!(NodeSet::new().to_mask(), (vec![], 0));
    }

    #[test]
    fn membership_size_and_emptiness() {
        let set = NodeSet::parse("1-2,5").unwrap();
        assert!(set.contains(1) && set.contains(2) && set.contains(5));
        assert!(!set.contains(0) && !set.contains(3));
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        assert_eq!(set.highest(), Some(5));
        assert!(NodeSet::new().is_empty());
        assert_eq!(NodeSet::new().len(), 0);
        assert_eq!(NodeSet::new().highest(), None);
    }

    #[test]
    fn collected_sets_drop_ids_the_kernel_cannot_have() {
        let set: NodeSet = [4, 1, MAX_NODES - 1, MAX_NODES, 5000].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), [1, 4, MAX_NODES - 1]);
    }
}
