//! A pre-flight check of backends that are configured but not allocated: would they
//! come to life on this host, and where would their memory come from? Nothing is
//! mapped. Every check `complete` makes before mapping runs for each backend (policy,
//! nodes, the kind's own rules, sizes, huge page pools), and the backends are summed
//! against the pools together, as a batch preallocates them together — so a VM whose
//! backends each fit but not all at once is caught before it starts. The memory limits
//! (bound nodes, host, memory and hugetlb cgroups: `backend/room.rs`) are summed the
//! same way: a failure for backends that preallocate, a warning for those that do not
//! (memory that may not be there when the guest touches it).

use crate::backend::{capacity, room, Backend};
use crate::kind::{Kind, Plan};
pub use crate::limits::LimitRoom;
use crate::limits::Snapshot;
use crate::numa::{HostTopology, NodeSet, Policy};

/// What a node offers the backend's memory now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoom {
    /// The node.
    pub node: u32,
    /// Free bytes on the node (`MemFree` of its meminfo).
    pub mem_free: u64,
    /// Free huge pages of the backend's page size on the node; None for memory of
    /// base pages.
    pub huge_free: Option<u64>,
}

/// The verdict on one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendCheck {
    /// Object id.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Bytes it would map (the size, rounded up to the page where the kind rounds).
    pub bytes: u64,
    /// Page size of its memory; None when its checks failed before it was known.
    pub page_size: Option<u64>,
    /// Whether its pages come from a huge page pool.
    pub hugetlb: bool,
    /// Its policy.
    pub policy: Policy,
    /// The nodes its memory may come from: its host-nodes for a policy that takes
    /// nodes, otherwise every node with memory.
    pub nodes: Vec<NodeRoom>,
    /// The memory limits its memory counts against, with what each can give now.
    pub limits: Vec<LimitRoom>,
    /// Every reason it would fail, in the words allocation would use; empty: it fits.
    pub problems: Vec<String>,
    /// For a backend without prealloc, the limits its memory would pass: allocation
    /// succeeds, but the guest may meet the OOM killer (or SIGBUS) when it touches it.
    pub warnings: Vec<String>,
}

impl BackendCheck {
    /// Whether it would come to life.
    pub fn fits(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `backends` as one batch against `host` (read it with `HostTopology::read`).
pub fn check(backends: &[&Backend], host: &HostTopology) -> Vec<BackendCheck> {
    let (mut out, plans): (Vec<BackendCheck>, Vec<Option<Plan>>) =
        backends.iter().map(|b| one(b, host)).unzip();
    // The same sum a batch makes before mapping, with the same words.
    let planned: Vec<(usize, (&Backend, &Plan))> = backends
        .iter()
        .zip(&plans)
        .enumerate()
        .filter_map(|(i, (b, p))| Some((i, (*b, p.as_ref()?))))
        .collect();
    let items: Vec<(&Backend, &Plan)> = planned.iter().map(|(_, it)| *it).collect();
    for (k, e) in capacity::check_batch(&items) {
        out[planned[k].0].problems.push(e.to_string());
    }
    let snap = Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes);
    for (k, (b, plan)) in items.iter().enumerate() {
        let o = &mut out[planned[k].0];
        o.limits = room::limits_of(b, plan)
            .iter()
            .map(|l| room::fact(l, &snap))
            .collect();
        o.warnings.extend(room::hint_warnings(b, plan, &snap));
    }
    // Preallocated backends are summed among themselves, as allocation does; every
    // backend is summed for the warnings, since the guest will touch all of them.
    let pre: Vec<usize> = (0..items.len())
        .filter(|&k| items[k].0.config().common.prealloc)
        .collect();
    let pre_items: Vec<(&Backend, &Plan)> = pre.iter().map(|&k| items[k]).collect();
    for (j, e) in room::check_batch(&pre_items, &snap) {
        out[planned[pre[j]].0].problems.push(e.to_string());
    }
    // Passes that rest on what bound nodes may give beyond their meminfo: a warning
    // with the numbers, not a refusal (summed as the problems and warnings above).
    for (j, w) in room::uncertain_passes(&pre_items, &snap) {
        out[planned[pre[j]].0].warnings.push(w);
    }
    let lazy = |k: &usize| !items[*k].0.config().common.prealloc;
    for (k, e) in room::check_batch(&items, &snap) {
        if lazy(&k) {
            out[planned[k].0].warnings.push(format!(
                "without prealloc the memory may not be there when the guest touches it: {e}"
            ));
        }
    }
    for (k, w) in room::uncertain_passes(&items, &snap).into_iter() {
        if lazy(&k) {
            out[planned[k].0].warnings.push(w);
        }
    }
    out
}

fn one(b: &Backend, host: &HostTopology) -> (BackendCheck, Option<Plan>) {
    let common = &b.config().common;
    let mut problems = Vec::new();
    let plan = match b.check_plan(host) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let node_ids: NodeSet = if common.policy.takes_nodes() {
        common.host_nodes.clone()
    } else {
        host.has_memory.clone()
    };
    let hugetlb = plan.as_ref().is_some_and(|p| p.hugetlb);
    let page_size = plan.as_ref().map(|p| p.page_size);
    let nodes = node_ids
        .iter()
        .filter_map(|n| host.node(n))
        .map(|n| NodeRoom {
            node: n.id,
            mem_free: n.mem_free,
            huge_free: match (hugetlb, page_size) {
                (true, Some(page)) => Some(n.pool(page).map_or(0, |p| p.free)),
                _ => None,
            },
        })
        .collect();
    let check = BackendCheck {
        id: b.id().to_string(),
        kind: b.kind(),
        bytes: plan.as_ref().map_or(common.size, |p| p.len),
        page_size,
        hugetlb,
        policy: common.policy,
        nodes,
        limits: Vec::new(),
        problems,
        warnings: Vec::new(),
    };
    (check, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numa::{HugePool, NodeInfo};
    use crate::props::MachineDefaults;

    fn backend(kind: Kind, id: &str, props: &[(&str, &str)]) -> Backend {
        let mut b = Backend::new(kind, id, &MachineDefaults::default());
        for (k, v) in props {
            b.set_str(k, v).unwrap();
        }
        b
    }

    /// This host with two nodes of made-up free memory and huge pages of `page`.
    fn two_nodes(page: u64) -> HostTopology {
        let mut host = HostTopology::read();
        let node = |id, mem_free, huge_free| NodeInfo {
            id,
            cpus: vec![],
            mem_total: 8 << 30,
            mem_free,
            huge_pools: vec![HugePool {
                page_size: page,
                total: 10,
                free: huge_free,
                reserved: 0,
                surplus: 0,
            }],
        };
        host.nodes = vec![node(0, 5 << 30, 7), node(1, 3 << 30, 2)];
        let both = NodeSet::parse("0-1").unwrap();
        (host.possible, host.online, host.has_memory) = (both.clone(), both.clone(), both);
        host
    }

    #[test]
    fn each_backend_gets_its_nodes_their_room_and_its_problems() {
        let page = *crate::numa::topology::huge_page_sizes()
            .first()
            .expect("this host offers huge pages");
        let host = two_nodes(page);
        let bound = backend(
            Kind::Ram,
            "bound",
            &[("size", "4097"), ("policy", "bind"), ("host-nodes", "1")],
        );
        let anywhere = backend(Kind::Ram, "anywhere", &[("size", "1G")]);
        let huge = backend(
            Kind::Memfd,
            "huge",
            &[
                ("size", &(2 * page).to_string()),
                ("hugetlb", "on"),
                ("hugetlbsize", &page.to_string()),
                ("reserve", "off"),
                ("policy", "preferred"),
                ("host-nodes", "0"),
            ],
        );
        let missing = backend(
            Kind::Ram,
            "missing",
            &[("size", "4096"), ("policy", "bind"), ("host-nodes", "2")],
        );
        let out = check(&[&bound, &anywhere, &huge, &missing], &host);
        assert_eq!(out.len(), 4);
        let room = |node, mem_free, huge_free| NodeRoom {
            node,
            mem_free,
            huge_free,
        };

        assert_eq!(out[0].id, "bound");
        assert_eq!(out[0].kind, Kind::Ram);
        assert_eq!(out[0].bytes, 8192, "ram rounds up to the page");
        assert_eq!(out[0].page_size, Some(4096));
        assert!(!out[0].hugetlb);
        assert_eq!(out[0].policy, Policy::Bind);
        assert_eq!(out[0].nodes, [room(1, 3 << 30, None)]);
        assert!(out[0].fits(), "{:?}", out[0].problems);

        assert_eq!(out[1].policy, Policy::Default);
        assert_eq!(
            out[1].nodes,
            [room(0, 5 << 30, None), room(1, 3 << 30, None)],
            "a policy without nodes may use every node with memory"
        );
        assert!(out[1].fits());

        assert!(out[2].hugetlb);
        assert_eq!((out[2].bytes, out[2].page_size), (2 * page, Some(page)));
        assert_eq!(out[2].nodes, [room(0, 5 << 30, Some(7))]);
        assert!(out[2].fits(), "{:?}", out[2].problems);

        assert_eq!(out[3].bytes, 4096);
        assert_eq!(out[3].page_size, None, "its checks failed first");
        assert!(!out[3].hugetlb);
        assert_eq!(out[3].nodes, [], "node 2 is not on this host");
        assert!(!out[3].fits());
        assert_eq!(
            out[3].problems,
            [
                "memory-backend-ram 'missing': host-nodes = '2': node 2 does not exist on \
                 this host (online nodes: 0-1)"
            ]
        );
    }
}
