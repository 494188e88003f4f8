//! Node lists: no panic; every parsed set is within MAX_NODES, prints in a form that
//! parses back to the same set, and its kernel mask round-trips.
#![no_main]

use hostmem::numa::{NodeSet, MAX_NODES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = NodeSet::parse(text) {
        assert!(set.iter().all(|n| n < MAX_NODES));
        assert_eq!(NodeSet::parse(&set.to_string()).as_ref(), Ok(&set));
        let (mask, maxnode) = set.to_mask();
        assert_eq!(NodeSet::from_mask(&mask), set);
        assert!(set.is_empty() || maxnode == set.highest().unwrap_or(0) as u64 + 2);
    }
});
