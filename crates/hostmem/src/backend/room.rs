//! Memory room: whether the limits that decide if a VM's memory is really there —
//! the nodes a strict policy binds to, the host, the memory cgroup, the hugetlb
//! cgroup — can give a batch of backends what they need, before anything is mapped;
//! and which of those limits the prealloc engine watches between steps
//! (`limits::watch`). Huge page *pools* are `capacity.rs`'s.
//!
//! What each policy guarantees decides the limit a backend is checked against:
//!
//! - `bind`: pages come only from host-nodes (MPOL_BIND); once those nodes are out of
//!   memory the kernel reclaims and then OOM-kills, it never falls back. So the bound
//!   nodes' room (summed) is the limit, and the host's too. Where the nodes' meminfo
//!   does not add up to /proc/meminfo (`limits::uncounted`: pages the kernel has not
//!   initialised yet), the bound nodes also count what the kernel may still add to
//!   them, an upper bound: a pass that rests on it is a warning
//!   ([`uncertain_passes`]), not a refusal on the node figure alone.
//! - `preferred`, `preferred-many`, `interleave`, `weighted-interleave`, `default`,
//!   `local`: the nodes are a first choice only; when they are full the kernel takes
//!   pages from any node the process may use. The OOM killer comes only when the whole
//!   host is out, so the host is the limit (cpusets that restrict a process's nodes are
//!   not considered: the host's room overstates theirs).
//! - Every policy: the memory cgroup's `memory.max` (the tightest ancestor) applies.
//!   Huge pages are not charged to it (unless the cgroup2 mount says
//!   `memory_hugetlb_accounting`), but to the hugetlb cgroup of their size.
//!
//! Memory the kernel can write back is not counted: a shared file on a disk file
//! system is page cache. Private mappings, memfd, shm and files on tmpfs are.
//!
//! A backend whose `ignore_memory_limits` is set is neither checked, counted nor
//! watched: its user knows better (memory about to be freed, a limit about to be
//! raised, overcommit on purpose).

use super::Backend;
use crate::error::{CgroupRef, Error, MemoryShort};
use crate::kind::Plan;
use crate::limits::uncounted::Files;
use crate::limits::watch::{Beyond, Edge, Source, Watch};
use crate::limits::{CgroupLimit, Known, LimitRoom, MemoryRoom, Snapshot};
use crate::numa::{HostTopology, NodeSet};
use crate::prealloc::Job;

/// A batch's memory limits from the check before mapping to the end of its prealloc:
/// what was read, the watch its threads ask, and which limits each job counts against.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    snap: Option<Snapshot>,
    watch: Watch,
    limits: Vec<Limit>,
    per_job: Vec<Vec<usize>>,
}

impl Guard {
    /// Checks the backends of `items` that preallocate against the limits, summed in
    /// order (the error's index is in `items`), and prepares their watch. Nothing is
    /// read when none of them counts against a limit.
    pub(crate) fn before_mapping(
        items: &[(&Backend, &Plan)],
        host: &HostTopology,
    ) -> Result<Guard, (usize, Error)> {
        let pre: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].0.cfg.common.prealloc)
            .collect();
        let pre_items: Vec<(&Backend, &Plan)> = pre.iter().map(|&i| items[i]).collect();
        if pre_items.iter().all(|(b, p)| limits_of(b, p).is_empty()) {
            return Ok(Guard::default());
        }
        let snap = Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes);
        if let Some((k, e)) = check_batch(&pre_items, &snap).into_iter().next() {
            return Err((pre[k], e));
        }
        let (watch, limits, per_job) = watch(&pre_items, &snap);
        Ok(Guard {
            snap: Some(snap),
            watch,
            limits,
            per_job,
        })
    }

    /// The check before, and the watch during, a fault-in of `need` more bytes of `b`'s
    /// live memory (a plug of some of its blocks): refused as [`check_more`] refuses,
    /// otherwise the limits a preallocation of that size is watched against, so another
    /// process taking the room meanwhile stops it at the edge.
    pub(crate) fn for_more(b: &Backend, need: u64, snap: Snapshot) -> Result<Guard, Error> {
        let plan = plan_more(b, need)?;
        let item = [(b, &plan)];
        if let Some((_, e)) = check_batch(&item, &snap).into_iter().next() {
            return Err(e);
        }
        let (watch, limits, per_job) = watch(&item, &snap);
        Ok(Guard {
            snap: Some(snap),
            watch,
            limits,
            per_job,
        })
    }

    /// Asks the watch of the one item [`Guard::for_more`] watches for a step of `len`
    /// bytes about to be faulted in by a writer other than prealloc (a copy restore's
    /// block): granted, refused at the edge it would cross (`Some`), or refused because
    /// another step already was (`None`). Granted steps end with [`Guard::finish`].
    /// (Only the snapshot module, behind the `json` feature, writes this way.)
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn grant(&self, len: u64) -> Result<(), Option<Edge>> {
        match self.per_job.first() {
            Some(limits) if !self.watch.is_empty() => self.watch.grant(limits, len),
            _ => Ok(()),
        }
    }

    /// A step [`Guard::grant`] allowed is written (or failed).
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn finish(&self, len: u64) {
        if let Some(limits) = self.per_job.first() {
            if !self.watch.is_empty() {
                self.watch.finish(limits, len);
            }
        }
    }

    /// Puts the watch on the `k`-th preallocating job of the batch.
    pub(crate) fn attach<'a>(&'a self, k: usize, job: &mut Job<'a>) {
        if !self.watch.is_empty() {
            job.watch = Some(&self.watch);
            job.limits = self.per_job.get(k).cloned().unwrap_or_default();
        }
    }

    /// The error for a prealloc stopped at `edge`, naming the limit.
    pub(crate) fn edge_error(&self, b: &Backend, edge: &Edge) -> Option<Error> {
        Some(edge_error(b, edge, &self.limits, self.snap.as_ref()?))
    }
}

/// A limit backends of a batch count against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The nodes of a strict policy.
    Nodes(NodeSet),
    /// The host as a whole.
    Host,
    /// The memory cgroup.
    MemoryCgroup,
    /// The hugetlb cgroup for pages of this size.
    HugetlbCgroup(u64),
}

impl Limit {
    /// Whether memory counted against `earlier` takes from this limit too.
    fn includes(&self, earlier: &Limit) -> bool {
        match (self, earlier) {
            (Limit::Nodes(mine), Limit::Nodes(theirs)) => theirs.iter().all(|n| mine.contains(n)),
            (Limit::Host, Limit::Nodes(_)) => true,
            (a, b) => a == b,
        }
    }
}

/// The limits `b`'s memory counts against (empty: none, or it ignores them).
pub(crate) fn limits_of(b: &Backend, plan: &Plan) -> Vec<Limit> {
    let c = &b.cfg.common;
    if b.ignore_memory_limits {
        return Vec::new();
    }
    if plan.hugetlb {
        return if plan.existing_file {
            Vec::new()
        } else {
            vec![Limit::HugetlbCgroup(plan.page_size)]
        };
    }
    if !counts(b) {
        return Vec::new();
    }
    let nodes = if c.policy.is_strict() {
        Limit::Nodes(c.host_nodes.clone())
    } else {
        Limit::Host
    };
    vec![nodes, Limit::MemoryCgroup]
}

/// Whether the memory takes RAM the limits count: the kind's answer.
fn counts(b: &Backend) -> bool {
    b.ops().takes_ram(&b.cfg.common)
}

/// Bytes `limit` can give according to `snap`, as (what its files show, what the
/// nodes may give beyond that: [`Snapshot::extra`], uncertain); None when it has no
/// limit or the files could not be read (then nothing is refused on its account).
fn available(limit: &Limit, snap: &Snapshot) -> Option<(u64, u64)> {
    let known =
        |k: &Known<Option<CgroupLimit>>| k.as_ref().ok().and_then(|l| l.as_ref().map(|l| l.room()));
    match limit {
        Limit::Nodes(nodes) => {
            let shown = nodes.iter().try_fold(0, |sum, n| {
                Some(sum + snap.node(n)?.as_ref().ok()?.available())
            })?;
            Some((shown, snap.extra(nodes.iter())))
        }
        Limit::Host => snap.host.as_ref().ok().map(|r| (r.available(), 0)),
        Limit::MemoryCgroup => known(&snap.memory_cgroup).map(|a| (a, 0)),
        Limit::HugetlbCgroup(page) => known(snap.hugetlb(*page)?).map(|a| (a, 0)),
    }
}

/// Why `limit`'s figure in `snap` is uncertain, if it is: a node's share of what the
/// host counts and no node does, and for a node or the host the [`Hint`]s.
///
/// [`Hint`]: crate::limits::Hint
fn uncertain(limit: &Limit, snap: &Snapshot) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    if let (Limit::Nodes(nodes), Some(u)) = (limit, &snap.uncounted) {
        if let Some((shown, extra)) = available(limit, snap).filter(|a| a.1 > 0) {
            why.push(format!(
                "{} of it from meminfo, {} uncertain: {}",
                crate::size::format_size(shown),
                crate::size::format_size(extra),
                u.why(&nodes_name(nodes), &nodes.iter().collect::<Vec<_>>())
            ));
        }
    }
    if matches!(limit, Limit::Nodes(_) | Limit::Host) {
        why.extend(snap.hints.iter().map(|h| h.to_string()));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// `node 4` or `nodes 0,4`.
fn nodes_name(nodes: &NodeSet) -> String {
    let name = if nodes.len() == 1 { "node" } else { "nodes" };
    format!("{name} {nodes}")
}

/// One limit as `--check` and `hostmem host` show it: its name, the bytes it can give
/// (None: no limit), or why it is not known, and why the figure is uncertain.
pub(crate) fn fact(limit: &Limit, snap: &Snapshot) -> LimitRoom {
    let cg = |what: &str, k: Option<&Known<Option<CgroupLimit>>>| match k {
        Some(Ok(Some(l))) => (
            format!("{what} {} ({} {})", l.cgroup, l.max_file, l.max),
            Ok(Some(l.room())),
        ),
        Some(Ok(None)) | None => (what.to_string(), Ok(None)),
        Some(Err(u)) => (what.to_string(), Err(u.clone())),
    };
    let (name, avail) = match limit {
        Limit::Nodes(nodes) => {
            let avail = nodes.iter().try_fold(0, |sum, n| match snap.node(n) {
                Some(Ok(r)) => Ok(sum + r.available()),
                Some(Err(u)) => Err(u.clone()),
                None => Ok(sum),
            });
            let extra = snap.extra(nodes.iter());
            (nodes_name(nodes), avail.map(|a| Some(a + extra)))
        }
        Limit::Host => (
            "host".to_string(),
            snap.host.clone().map(|r| Some(r.available())),
        ),
        Limit::MemoryCgroup => cg("memory cgroup", Some(&snap.memory_cgroup)),
        Limit::HugetlbCgroup(p) => cg(
            &format!("hugetlb cgroup for {}", crate::size::format_size(*p)),
            snap.hugetlb(*p),
        ),
    };
    LimitRoom {
        limit: name,
        available: avail,
        uncertain: uncertain(limit, snap),
    }
}

/// The error naming `limit` for `b`.
pub(crate) fn short_error(
    b: &Backend,
    limit: &Limit,
    short: MemoryShort,
    snap: &Snapshot,
) -> Error {
    let (kind, id, short) = (b.kind().qom_type(), b.id.clone(), Box::new(short));
    let cgroup = |k: Option<&Known<Option<CgroupLimit>>>| {
        let l = k.and_then(|k| k.as_ref().ok().cloned().flatten());
        Box::new(l.map_or(
            CgroupRef {
                cgroup: "?".into(),
                file: "?".into(),
                max: 0,
            },
            |l| CgroupRef {
                cgroup: l.cgroup,
                file: l.max_file,
                max: l.max,
            },
        ))
    };
    match limit {
        Limit::Nodes(nodes) => Error::NodeMemoryShort {
            kind,
            id,
            policy: b.cfg.common.policy,
            nodes: nodes.clone(),
            short,
        },
        Limit::Host => Error::HostMemoryShort { kind, id, short },
        Limit::MemoryCgroup => Error::CgroupMemoryShort {
            kind,
            id,
            cgroup: cgroup(Some(&snap.memory_cgroup)),
            short,
        },
        Limit::HugetlbCgroup(page_size) => Error::HugetlbCgroupShort {
            kind,
            id,
            page_size: *page_size,
            cgroup: cgroup(snap.hugetlb(*page_size)),
            short,
        },
    }
}

/// Per backend of a batch (index in `items`) and limit it counts against: the bytes
/// it needs there together with the backends before it under the same limit, and
/// those backends.
fn needs(items: &[(&Backend, &Plan)]) -> Vec<(usize, Limit, u64, Vec<usize>)> {
    let counted: Vec<(Vec<Limit>, u64)> = items
        .iter()
        .map(|(b, p)| (limits_of(b, p), p.len))
        .collect();
    let mut out = Vec::new();
    for (i, (limits, len)) in counted.iter().enumerate() {
        for limit in limits {
            let earlier: Vec<usize> = (0..i)
                .filter(|&j| counted[j].0.iter().any(|l| limit.includes(l)))
                .collect();
            let needed = len + earlier.iter().map(|&j| counted[j].1).sum::<u64>();
            out.push((i, limit.clone(), needed, earlier));
        }
    }
    out
}

/// Checks the backends of a batch in order against every limit they count against:
/// each one's need plus that of the backends before it under the same limit. Returns
/// every (index in `items`, error); a backend may have several. A bound node counts
/// with what it may give beyond its meminfo ([`uncertain_passes`] says where that
/// decided).
pub(crate) fn check_batch(items: &[(&Backend, &Plan)], snap: &Snapshot) -> Vec<(usize, Error)> {
    let mut out = Vec::new();
    for (i, limit, needed, earlier) in needs(items) {
        let Some((shown, extra)) = available(&limit, snap) else {
            continue;
        };
        if needed > shown + extra {
            let short = MemoryShort {
                needed,
                available: shown + extra,
                with: earlier.iter().map(|&j| items[j].0.id.clone()).collect(),
                stopped_after: None,
            };
            out.push((i, short_error(items[i].0, &limit, short, snap)));
        }
    }
    out
}

/// Whether `need` more bytes of `b`'s live memory may become resident now (a restore
/// into it, a plug of some of its blocks), against the limits a preallocation of that
/// size meets: the error it would get (`NodeMemoryShort` naming the bound nodes,
/// `HostMemoryShort`, the memory or hugetlb cgroup).
// Only snapshot restores ask without preallocating (feature `json`); plugs use
// [`Guard::for_more`], which also watches.
#[cfg_attr(not(feature = "json"), allow(dead_code))]
pub(crate) fn check_more(b: &Backend, need: u64, snap: &Snapshot) -> Result<(), Error> {
    let plan = plan_more(b, need)?;
    match check_batch(&[(b, &plan)], snap).into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The plan the limits see for `need` more bytes of `b`'s live memory.
fn plan_more(b: &Backend, need: u64) -> Result<Plan, Error> {
    let Some(page_size) = b.page_size() else {
        return Err(b.not_allocated());
    };
    Ok(Plan {
        len: need,
        page_size,
        hugetlb: page_size > crate::sys::page_size() as u64,
        existing_file: false,
    })
}

/// The backends of a batch (index in `items`) that [`check_batch`] lets pass only
/// thanks to what bound nodes may give beyond their meminfo, each with a warning that
/// says so with the numbers.
pub(crate) fn uncertain_passes(
    items: &[(&Backend, &Plan)],
    snap: &Snapshot,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, limit, needed, _) in needs(items) {
        let Limit::Nodes(nodes) = &limit else {
            continue;
        };
        let Some((shown, extra)) = available(&limit, snap) else {
            continue;
        };
        if needed > shown && needed <= shown + extra {
            let b = items[i].0;
            out.push((
                i,
                format!(
                    "{} '{}': needs {} on {}, more than the {} its meminfo shows available; \
                     not refused: {}",
                    b.kind().qom_type(),
                    b.id,
                    crate::size::format_size(needed),
                    nodes_name(nodes),
                    crate::size::format_size(shown),
                    uncertain(&limit, snap).unwrap_or_default()
                ),
            ));
        }
    }
    out
}

/// The [`Hint`]s as warnings for a backend whose memory counts against a node or the
/// host: figures that may change without the kernel's counters disagreeing.
///
/// [`Hint`]: crate::limits::Hint
pub(crate) fn hint_warnings(b: &Backend, plan: &Plan, snap: &Snapshot) -> Vec<String> {
    let counted = limits_of(b, plan)
        .iter()
        .any(|l| matches!(l, Limit::Nodes(_) | Limit::Host));
    if !counted {
        return Vec::new();
    }
    snap.hints
        .iter()
        .map(|h| format!("{} '{}': {h}", b.kind().qom_type(), b.id))
        .collect()
}

/// The watch for a batch's preallocation: the limits the items count against, read
/// between steps, with each item's limit indices. Bound memory watches its nodes,
/// other memory the host; both the memory cgroup if it has a limit; huge pages their
/// hugetlb cgroup if it has one.
fn watch(items: &[(&Backend, &Plan)], snap: &Snapshot) -> (Watch, Vec<Limit>, Vec<Vec<usize>>) {
    let mut limits: Vec<Limit> = Vec::new();
    let mut sources: Vec<(Source, u64)> = Vec::new();
    let mut per_item = Vec::with_capacity(items.len());
    for (b, plan) in items {
        let mut mine = Vec::new();
        for limit in limits_of(b, plan) {
            let source = match &limit {
                Limit::Nodes(nodes) => Some(Source::Nodes(
                    nodes
                        .iter()
                        .map(|n| (MemoryRoom::node_path(n), snap.marks.node(n)))
                        .collect(),
                    snap.uncounted.as_ref().map(|_| Beyond {
                        bound: nodes.iter().collect(),
                        files: Files::of(snap.nodes.iter().map(|(n, _)| *n)),
                    }),
                )),
                Limit::Host => Some(Source::Host(snap.marks.host())),
                Limit::MemoryCgroup => snap
                    .memory_cgroup
                    .clone()
                    .ok()
                    .flatten()
                    .map(Source::Cgroup),
                Limit::HugetlbCgroup(p) => snap
                    .hugetlb(*p)
                    .and_then(|k| k.clone().ok().flatten())
                    .map(Source::Cgroup),
            };
            let Some(source) = source else { continue };
            let at = match limits.iter().position(|l| *l == limit) {
                Some(at) => at,
                None => {
                    limits.push(limit);
                    sources.push((source, 0));
                    limits.len() - 1
                }
            };
            sources[at].1 += plan.len;
            mine.push(at);
        }
        per_item.push(mine);
    }
    (Watch::new(sources), limits, per_item)
}

/// After huge pages failed to fault in (the pages given back): the hugetlb cgroup's
/// limit, when that is what fell short of `needed` bytes — the pools may be full
/// and the cgroup the reason (as when the checks were overridden).
pub(crate) fn hugetlb_cgroup_short(b: &Backend, page_size: u64, needed: u64) -> Option<Error> {
    let l = crate::limits::cgroup::hugetlb(page_size).ok().flatten()?;
    hugetlb_short_of(b, page_size, needed, l)
}

/// The error for `b`'s `needed` bytes of `page_size` pages when the hugetlb cgroup
/// limit `l` has less room; None when they fit (exactly filling it fits).
fn hugetlb_short_of(b: &Backend, page_size: u64, needed: u64, l: CgroupLimit) -> Option<Error> {
    if l.room() >= needed {
        return None;
    }
    let short = MemoryShort {
        needed,
        available: l.room(),
        with: Vec::new(),
        stopped_after: None,
    };
    Some(Error::HugetlbCgroupShort {
        kind: b.kind().qom_type(),
        id: b.id.clone(),
        page_size,
        cgroup: Box::new(CgroupRef {
            cgroup: l.cgroup,
            file: l.max_file,
            max: l.max,
        }),
        short: Box::new(short),
    })
}

/// The error for a prealloc stopped at `edge` (the limits as `watch` listed them).
fn edge_error(b: &Backend, edge: &Edge, limits: &[Limit], snap: &Snapshot) -> Error {
    let short = MemoryShort {
        needed: edge.needed,
        available: edge.available,
        with: Vec::new(),
        stopped_after: Some(edge.done),
    };
    match limits.get(edge.limit) {
        Some(limit) => short_error(b, limit, short, snap),
        None => Error::HostMemoryShort {
            kind: b.kind().qom_type(),
            id: b.id.clone(),
            short: Box::new(short),
        },
    }
}

#[cfg(test)]
mod tests;
