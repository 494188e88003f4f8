//! What a move of a running process's pages did: the report the move pass fills in
//! (`pass.rs`, `plan.rs`) and `rebind.rs` returns.

use std::collections::BTreeMap;

/// What a move did, page by page, as the kernel reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteRebindReport {
    /// Bytes per page the range was moved in (the kernel's page size of the mapping).
    pub page_size: u64,
    /// Resident pages of the range when the move started.
    pub resident_pages: u64,
    /// Resident pages that were already on their target node.
    pub already_placed: u64,
    /// Pages the kernel moved (checked after the move: on their target node now).
    pub moved: u64,
    /// Pages that stayed where they were, by the errno move_pages gave them.
    pub failed: BTreeMap<i32, u64>,
    /// Pages not tried because the move was cancelled.
    pub skipped: u64,
    /// The move was cancelled (Progress::cancel) before it finished.
    pub cancelled: bool,
    /// Wall time of the move itself, seconds.
    pub seconds: f64,
    /// Pages per target node moved there.
    pub moved_per_node: BTreeMap<u32, u64>,
    /// The range's policy from numa_maps after the move: what pages faulted later get.
    pub policy_after: String,
    /// Things the caller should know: a policy that sends later faults elsewhere.
    pub warnings: Vec<String>,
}

impl RemoteRebindReport {
    /// Bytes moved.
    pub fn bytes_moved(&self) -> u64 {
        self.moved * self.page_size
    }

    /// Pages that failed, all reasons.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Bytes moved per second, in GiB/s (0 when nothing moved).
    pub fn gib_per_sec(&self) -> f64 {
        if self.seconds <= 0.0 || self.moved == 0 {
            return 0.0;
        }
        self.bytes_moved() as f64 / self.seconds / f64::from(1u32 << 30)
    }
}
