//! The backend object and its life (DESIGN.md §1): configured → complete → live →
//! deleted.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result, Shortage, Step};
use crate::inspect::{self, KernelView};
use crate::kind::{self, Mapped, Plan};
use crate::numa::{HostTopology, HugePool, NodeSet, Policy};
use crate::prealloc::{self, Failure, Job, Method, Progress, Stats};
use crate::props::{self, Config, Kind, Live, MachineDefaults, PropInfo, PropValue};
use crate::sys::{self, advice, mpol};

/// The memory of a live backend. It stays mapped while any [`InUse`] handle or the
/// backend refers to it.
#[derive(Debug)]
pub struct Region {
    mapped: Mapped,
    page_size: u64,
    hugetlb: bool,
}

/// A consumer's hold on a backend's memory (a guest region, a VMM): while one exists
/// the backend refuses deletion, and the memory stays mapped even if the backend
/// object is dropped.
#[derive(Debug, Clone)]
pub struct InUse(Arc<Region>);

impl InUse {
    /// Start address of the mapping in this process.
    pub fn host_addr(&self) -> usize {
        self.0.mapped.map.addr()
    }

    pub fn len(&self) -> usize {
        self.0.mapped.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn page_size(&self) -> u64 {
        self.0.page_size
    }

    /// The memfd or file behind the memory, for consumers that map it themselves
    /// (vhost-user back ends), with the offset of this memory in it.
    pub fn fd(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.0
            .mapped
            .fd
            .as_ref()
            .map(|f| (f.as_fd(), self.0.mapped.fd_offset))
    }

    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.mapped.map.read_at(offset, buf)
    }

    pub fn write_at(&self, offset: usize, data: &[u8]) -> std::io::Result<()> {
        self.0.mapped.map.write_at(offset, data)
    }

    /// memset over a range (benchmarks: the zeroing limit).
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> std::io::Result<()> {
        self.0.mapped.map.fill(offset, len, byte)
    }

    #[cfg(feature = "vm-memory")]
    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.0
    }
}

#[cfg(feature = "vm-memory")]
impl Region {
    pub(crate) fn raw(&self) -> &crate::sys::RawMapping {
        &self.mapped.map
    }

    pub(crate) fn fd_and_offset(&self) -> Option<(&std::os::fd::OwnedFd, u64)> {
        self.mapped.fd.as_ref().map(|f| (f, self.mapped.fd_offset))
    }
}

/// Where the pages of a backend are after a rebind, read back page by page.
#[derive(Debug, Clone, PartialEq)]
pub struct RebindReport {
    pub pages_per_node: BTreeMap<u32, u64>,
    pub pages_absent: u64,
    pub pages_on_target: u64,
    pub pages_present: u64,
    pub seconds: f64,
}

impl RebindReport {
    /// Share of present pages that are on the target nodes.
    pub fn fraction_on_target(&self) -> f64 {
        if self.pages_present == 0 {
            1.0
        } else {
            self.pages_on_target as f64 / self.pages_present as f64
        }
    }
}

#[derive(Debug)]
struct LiveState {
    region: Arc<Region>,
    prealloc: Option<Stats>,
}

/// Which backend of a batch failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BatchError {
    pub index: usize,
    #[source]
    pub error: Error,
}

/// A host memory backend: `memory-backend-ram`, `-file` or `-memfd`.
#[derive(Debug)]
pub struct Backend {
    id: String,
    kind: Kind,
    cfg: Config,
    live: Option<LiveState>,
    deleted: bool,
}

impl Backend {
    /// A configured backend with the machine defaults; nothing is allocated yet.
    pub fn new(kind: Kind, id: impl Into<String>, defaults: &MachineDefaults) -> Backend {
        Backend {
            id: id.into(),
            kind,
            cfg: Config::new(kind, defaults),
            live: None,
            deleted: false,
        }
    }

    /// Typed construction for Rust callers.
    pub fn builder(kind: Kind, id: impl Into<String>) -> Builder {
        Builder {
            backend: Backend::new(kind, id, &MachineDefaults::default()),
            error: None,
        }
    }

    /// Like [`Backend::builder`], starting from machine-wide defaults.
    pub fn builder_with(kind: Kind, id: impl Into<String>, defaults: &MachineDefaults) -> Builder {
        Builder {
            backend: Backend::new(kind, id, defaults),
            error: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// The properties this backend has, with their types.
    pub fn properties(&self) -> impl Iterator<Item = &'static PropInfo> {
        props::properties(self.kind)
    }

    fn info(&self, name: &str) -> Result<&'static PropInfo> {
        props::lookup(self.kind, name).ok_or_else(|| Error::UnknownProperty {
            kind: self.kind.qom_type(),
            prop: name.to_string(),
        })
    }

    /// Reads a property.
    pub fn get(&self, name: &str) -> Result<PropValue> {
        let info = self.info(name)?;
        self.cfg
            .get(info.name)
            .ok_or_else(|| Error::UnknownProperty {
                kind: self.kind.qom_type(),
                prop: name.to_string(),
            })
    }

    /// Sets a property from its text form (`-object` syntax).
    pub fn set_str(&mut self, name: &str, text: &str) -> Result<()> {
        let value = self.info(name)?.ty.parse(name, text)?;
        self.set(name, value)
    }

    /// Sets a property. On a live backend, `merge`, `dump`, `prealloc` (off→on
    /// preallocates now), `prealloc-threads` and `discard-data` take effect at once;
    /// placement changes only through [`Backend::rebind`]; the rest are fixed.
    pub fn set(&mut self, name: &str, value: PropValue) -> Result<()> {
        let info = self.info(name)?;
        if self.deleted {
            return Err(self.not_allocated());
        }
        if self.live.is_none() {
            return self.cfg.store(self.kind, info, value);
        }
        match info.live {
            Live::Fixed => Err(Error::FixedAfterAllocation {
                kind: self.kind.qom_type(),
                id: self.id.clone(),
                prop: info.name,
            }),
            Live::Rebind => {
                // Setting the value it already has changes nothing and is harmless.
                if self.cfg.get(info.name).as_ref() == Some(&value) {
                    Ok(())
                } else {
                    Err(Error::PlacementNeedsRebind {
                        id: self.id.clone(),
                        prop: info.name,
                    })
                }
            }
            Live::Immediate => {
                let mut next = self.cfg.clone();
                next.store(self.kind, info, value)?;
                // Like QEMU: memory once preallocated stays so; prealloc on→off
                // changes nothing, not even the property.
                next.prealloc |= self.cfg.prealloc;
                self.apply_live(&next)?;
                self.cfg = next;
                Ok(())
            }
        }
    }

    fn apply_live(&mut self, next: &Config) -> Result<()> {
        let len = self.len();
        if next.merge != self.cfg.merge {
            let adv = if next.merge {
                advice::MERGEABLE
            } else {
                advice::UNMERGEABLE
            };
            self.advise(adv, len)?;
        }
        if next.dump != self.cfg.dump {
            let adv = if next.dump {
                advice::DODUMP
            } else {
                advice::DONTDUMP
            };
            self.advise(adv, len)?;
        }
        if next.prealloc && !self.cfg.prealloc {
            let threads = next.prealloc_threads;
            self.prealloc_now(threads, &Progress::new())?;
        }
        Ok(())
    }

    fn advise(&self, adv: i32, len: usize) -> Result<()> {
        let region = &self
            .live
            .as_ref()
            .ok_or_else(|| self.not_allocated())?
            .region;
        match region.mapped.map.madvise(0, len, adv) {
            Ok(()) => Ok(()),
            // KSM advice on memory KSM cannot merge (shared, hugetlb) or a kernel
            // without KSM: the kernel view shows whether `mg` took, and reports say so.
            Err(_) if adv == advice::MERGEABLE || adv == advice::UNMERGEABLE => Ok(()),
            Err(e) => Err(self.alloc_error(Step::Advise, sys::strerror(&e))),
        }
    }

    fn not_allocated(&self) -> Error {
        Error::NotAllocated {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
        }
    }

    fn alloc_error(&self, step: Step, reason: String) -> Error {
        Error::Alloc {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
            step,
            reason,
        }
    }

    /// Size in bytes (0 before `size` is set).
    pub fn len(&self) -> usize {
        self.cfg.size.unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Allocates: validate, map, advise, bind, preallocate (DESIGN.md §1). On failure
    /// nothing is left: no mapping, no created file, no huge pages held.
    pub fn complete(&mut self) -> Result<()> {
        Backend::complete_all(&mut [self], &Progress::new())
    }

    /// Allocates with observable progress and cancellation.
    pub fn complete_with(&mut self, progress: &Progress) -> Result<()> {
        Backend::complete_all(&mut [self], progress)
    }

    /// Allocates several backends as one batch: all are validated before any is
    /// mapped, and all preallocate at the same time. Either all come to life or none.
    pub fn complete_all(backends: &mut [&mut Backend], progress: &Progress) -> Result<()> {
        Backend::complete_batch(backends, progress).map_err(|e| e.error)
    }

    /// [`Backend::complete_all`], telling which backend failed.
    pub fn complete_batch(
        backends: &mut [&mut Backend],
        progress: &Progress,
    ) -> Result<(), BatchError> {
        let at = |index| move |error| BatchError { index, error };
        let host = HostTopology::read();
        let mut plans = Vec::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            plans.push(b.validate(&host).map_err(at(i))?);
        }
        let mut placed = Vec::with_capacity(backends.len());
        for (i, (b, plan)) in backends.iter().zip(&plans).enumerate() {
            placed.push(b.map_and_place(plan, &host).map_err(at(i))?);
        }
        let wanted: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].cfg.prealloc)
            .collect();
        let mut jobs = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            jobs.push(
                backends[i]
                    .job(
                        &placed[i].mapped.map,
                        &plans[i],
                        &host,
                        backends[i].cfg.prealloc_threads,
                    )
                    .map_err(at(i))?,
            );
        }
        let results = prealloc::populate(&jobs, progress);
        drop(jobs);
        let mut stats: Vec<Option<Stats>> = vec![None; backends.len()];
        let mut failure = None;
        for (&i, r) in wanted.iter().zip(results) {
            match r {
                Ok(s) => stats[i] = Some(s),
                Err(f) => {
                    // The first real fault explains the batch; aborts follow from it.
                    let keep = matches!(
                        (&failure, &f),
                        (None, _)
                            | (Some((_, Failure::Aborted)), _)
                            | (
                                Some((_, Failure::Cancelled)),
                                Failure::Fault { .. } | Failure::Spawn(_)
                            )
                    );
                    if keep {
                        failure = Some((i, f));
                    }
                }
            }
        }
        if let Some((i, f)) = failure {
            // Undo everything first, so the error reads the pools as they are again.
            drop(placed);
            return Err(at(i)(backends[i].prealloc_error(f, &plans[i])));
        }
        for ((b, mut region), s) in backends.iter_mut().zip(placed).zip(stats) {
            if let Some(r) = Arc::get_mut(&mut region) {
                r.mapped.keep_file();
            }
            b.live = Some(LiveState {
                region,
                prealloc: s,
            });
        }
        Ok(())
    }

    /// Every check that can be made before mapping memory.
    fn validate(&self, host: &HostTopology) -> Result<Plan> {
        if self.deleted {
            return Err(self.not_allocated());
        }
        if self.live.is_some() {
            return Err(Error::AlreadyAllocated {
                kind: self.kind.qom_type(),
                id: self.id.clone(),
            });
        }
        let size = self.cfg.size.ok_or(Error::Missing("size"))?;
        if self.cfg.prealloc && !self.cfg.reserve {
            return Err(Error::PreallocWithoutReserve);
        }
        self.check_placement(self.cfg.policy, &self.cfg.host_nodes, host)?;
        let plan = kind::plan(self.kind, &self.id, &self.cfg)?;
        if plan.hugetlb && !plan.existing_file {
            self.check_huge_pages(size / plan.page_size, plan.page_size, host)?;
        }
        Ok(plan)
    }

    /// Policy and nodes make sense together, on this kernel and this host.
    fn check_placement(&self, policy: Policy, nodes: &NodeSet, host: &HostTopology) -> Result<()> {
        match policy {
            Policy::Default if !nodes.is_empty() => return Err(Error::NodesWithDefaultPolicy),
            Policy::Local if !nodes.is_empty() => return Err(Error::NodesNotTaken(policy)),
            p if p.takes_nodes() && nodes.is_empty() => return Err(Error::NodesMissing(p)),
            _ => {}
        }
        let need = policy.min_kernel();
        if host.kernel_version < need {
            return Err(Error::PolicyUnsupported {
                kind: self.kind.qom_type(),
                id: self.id.clone(),
                policy,
                need,
                have: host.kernel_version,
            });
        }
        let bad = |why: String| Error::BadNode {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
            nodes: nodes.to_string(),
            why,
        };
        for n in nodes.iter() {
            if !host.possible.contains(n) {
                return Err(bad(format!(
                    "node {n} does not exist on this host (online nodes: {})",
                    host.online
                )));
            }
            if !host.online.contains(n) {
                return Err(bad(format!(
                    "node {n} is offline (online nodes: {})",
                    host.online
                )));
            }
            if !host.has_memory.contains(n) {
                return Err(bad(format!(
                    "node {n} has no memory (nodes with memory: {})",
                    host.has_memory
                )));
            }
        }
        Ok(())
    }

    /// Names a huge page shortage before mapping: host-wide for the reservation, and
    /// per bound node when the pages must come from there.
    fn check_huge_pages(&self, needed: u64, page_size: u64, host: &HostTopology) -> Result<()> {
        if !self.cfg.reserve && !self.cfg.prealloc {
            return Ok(());
        }
        self.check_huge_pool(needed, page_size, host, self.cfg.prealloc)
    }

    /// Refuses when the pool (and, for `bind` when `faulting`, the bound nodes' pools)
    /// cannot give `needed` pages.
    fn check_huge_pool(
        &self,
        needed: u64,
        page_size: u64,
        host: &HostTopology,
        faulting: bool,
    ) -> Result<()> {
        let short = |free, nodes| Error::HugePagesShort {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
            shortage: Shortage {
                page_size,
                needed,
                free,
                nodes,
            },
        };
        let pool = HugePool::read(page_size, None);
        let available = pool.map_or(0, |p| p.available());
        if available < needed {
            return Err(short(available, Vec::new()));
        }
        if faulting && self.cfg.policy == Policy::Bind {
            let per_node = self.bound_pools(host, page_size);
            let free: u64 = per_node.iter().map(|(_, f)| f).sum();
            if free < needed {
                return Err(short(free, per_node));
            }
        }
        Ok(())
    }

    /// Free huge pages of `page_size` on each node of `host-nodes`.
    fn bound_pools(&self, host: &HostTopology, page_size: u64) -> Vec<(u32, u64)> {
        let free = |n| {
            host.node(n)
                .and_then(|i| i.pool(page_size))
                .map_or(0, |p| p.free)
        };
        self.cfg.host_nodes.iter().map(|n| (n, free(n))).collect()
    }

    /// Maps the memory, advises it and applies the NUMA policy.
    fn map_and_place(&self, plan: &Plan, host: &HostTopology) -> Result<Arc<Region>> {
        let mapped = kind::map(self.kind, &self.id, &self.cfg, plan)?;
        let region = Region {
            mapped,
            page_size: plan.page_size,
            hugetlb: plan.hugetlb,
        };
        let map = &region.mapped.map;
        // Like QEMU: a child the VMM forks (a helper, a mount) must not share or
        // copy-on-write guest RAM, nor keep its pages alive after the backend goes.
        map.madvise(0, map.len(), advice::DONTFORK)
            .map_err(|e| self.alloc_error(Step::Advise, sys::strerror(&e)))?;
        if self.cfg.merge {
            // Kernels without KSM refuse; reports show the missing `mg` flag.
            let _ = map.madvise(0, map.len(), advice::MERGEABLE);
        }
        if !self.cfg.dump {
            map.madvise(0, map.len(), advice::DONTDUMP)
                .map_err(|e| self.alloc_error(Step::Advise, sys::strerror(&e)))?;
        }
        self.bind(map, self.cfg.policy, &self.cfg.host_nodes, host, false)?;
        Ok(Arc::new(region))
    }

    fn bind(
        &self,
        map: &sys::RawMapping,
        policy: Policy,
        nodes: &NodeSet,
        host: &HostTopology,
        strict: bool,
    ) -> Result<()> {
        let mode = policy.kernel_mode(nodes.len(), host.kernel_version);
        let (mask, maxnode) = nodes.to_mask();
        // Fresh memory has no pages to move; on a rebind STRICT makes unmovable pages
        // an error instead of a silent partial move.
        let mut flags = mpol::MF_MOVE;
        if strict || !matches!(policy, Policy::Default | Policy::Local) {
            flags |= mpol::MF_STRICT;
        }
        map.mbind(0, map.len(), mode, &mask, maxnode, flags)
            .map_err(|e| Error::Mbind(sys::strerror(&e)))
    }

    fn job<'a>(
        &self,
        map: &'a sys::RawMapping,
        plan: &Plan,
        host: &HostTopology,
        threads: u32,
    ) -> Result<Job<'a>> {
        let method = if self.kind == Kind::File && self.cfg.readonly {
            Method::Populate { write: false }
        } else if host.features.populate_write {
            Method::Populate { write: true }
        } else if self.kind == Kind::Ram && !self.cfg.share {
            // Private anonymous memory gets OOM, never SIGBUS: touching it is safe.
            Method::Touch
        } else {
            return Err(self.alloc_error(
                Step::Prealloc,
                format!(
                    "this kernel ({}) lacks MADV_POPULATE_WRITE (Linux 5.14+) and touching shared or huge page memory could raise SIGBUS",
                    host.kernel_release
                ),
            ));
        };
        let cpus = match self.cfg.policy {
            Policy::Default | Policy::Local => Vec::new(),
            _ => host.cpus_of(&self.cfg.host_nodes),
        };
        Ok(Job {
            map,
            page_size: plan.page_size,
            threads: threads as usize,
            cpus,
            method,
        })
    }

    fn prealloc_error(&self, f: Failure, plan: &Plan) -> Error {
        match f {
            Failure::Cancelled => Error::Cancelled {
                kind: self.kind.qom_type(),
                id: self.id.clone(),
            },
            Failure::Aborted => self.alloc_error(
                Step::Prealloc,
                "stopped because another backend failed".into(),
            ),
            Failure::Spawn(e) => self.alloc_error(
                Step::Prealloc,
                format!("cannot create threads: {}", sys::strerror(&e)),
            ),
            Failure::Fault { offset, err } => {
                if plan.hugetlb {
                    let needed = self.len() as u64 / plan.page_size;
                    let host = HostTopology::read();
                    let free = HugePool::read(plan.page_size, None).map_or(0, |p| p.available());
                    let nodes = if self.cfg.policy == Policy::Bind {
                        self.bound_pools(&host, plan.page_size)
                    } else {
                        Vec::new()
                    };
                    return Error::HugePagesShort {
                        kind: self.kind.qom_type(),
                        id: self.id.clone(),
                        shortage: Shortage {
                            page_size: plan.page_size,
                            needed,
                            free,
                            nodes,
                        },
                    };
                }
                // A file this backend created is removed by now (undone before the
                // error is made): ask about the directory it was in.
                let file_room = match (self.kind, self.cfg.mem_path.as_deref()) {
                    (Kind::File, Some(p)) => sys::statfs(p)
                        .or_else(|e| p.parent().map_or(Err(e), sys::statfs))
                        .ok()
                        .map(|fs| (p, fs.avail_bytes)),
                    _ => None,
                };
                let what = match (err.raw_os_error(), file_room) {
                    (Some(libc::EFAULT | libc::ENOSPC), Some((path, free))) => format!(
                        "the file system holding {} has no room for it ({} free)",
                        path.display(),
                        crate::size::format_size(free)
                    ),
                    (Some(libc::ENOMEM), _) => "out of memory".to_string(),
                    (Some(libc::EFAULT), _) => {
                        "the memory cannot be faulted in (it would raise SIGBUS)".to_string()
                    }
                    _ => sys::strerror(&err),
                };
                self.alloc_error(
                    Step::Prealloc,
                    format!("{what} at offset {offset} of {} bytes", self.len()),
                )
            }
        }
    }

    /// Preallocates a live backend now (prealloc off→on).
    pub fn prealloc_now(&mut self, threads: u32, progress: &Progress) -> Result<()> {
        let host = HostTopology::read();
        let live = self.live.as_ref().ok_or_else(|| self.not_allocated())?;
        let region = live.region.clone();
        let plan = Plan {
            page_size: region.page_size,
            hugetlb: region.hugetlb,
            existing_file: false,
        };
        // Without a reservation nothing holds the pages: refuse a shortage before
        // faulting any in, so a failure leaves the pool as it was (the pages already
        // there are the guest's and stay).
        if region.hugetlb && !self.cfg.reserve {
            if let Ok((_, absent)) = inspect::page_nodes(&region.mapped.map, region.page_size) {
                self.check_huge_pool(absent, region.page_size, &host, true)?;
            }
        }
        let job = self.job(&region.mapped.map, &plan, &host, threads)?;
        let r = prealloc::populate(std::slice::from_ref(&job), progress).pop();
        match r {
            Some(Ok(s)) => {
                if let Some(l) = self.live.as_mut() {
                    l.prealloc = Some(s);
                }
                self.cfg.prealloc = true;
                Ok(())
            }
            Some(Err(f)) => Err(self.prealloc_error(f, &plan)),
            None => Ok(()),
        }
    }

    /// Changes placement of a live backend as one operation: policy and nodes together,
    /// existing pages migrated (MPOL_MF_MOVE), then read back page by page.
    pub fn rebind(&mut self, policy: Policy, nodes: NodeSet) -> Result<RebindReport> {
        let host = HostTopology::read();
        self.check_placement(policy, &nodes, &host)?;
        let live = self.live.as_ref().ok_or_else(|| self.not_allocated())?;
        let region = live.region.clone();
        let start = std::time::Instant::now();
        self.bind(&region.mapped.map, policy, &nodes, &host, true)?;
        self.cfg.policy = policy;
        self.cfg.host_nodes = nodes.clone();
        let (per_node, absent) = self.page_nodes()?;
        let present: u64 = per_node.values().sum();
        let on_target = if nodes.is_empty() {
            present
        } else {
            per_node
                .iter()
                .filter(|(n, _)| nodes.contains(**n))
                .map(|(_, c)| c)
                .sum()
        };
        Ok(RebindReport {
            pages_per_node: per_node,
            pages_absent: absent,
            pages_on_target: on_target,
            pages_present: present,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// A hold on the memory for a consumer; deletion is refused while it lives.
    pub fn hold(&self) -> Result<InUse> {
        Ok(InUse(
            self.live
                .as_ref()
                .ok_or_else(|| self.not_allocated())?
                .region
                .clone(),
        ))
    }

    /// Whether a consumer holds the memory.
    pub fn is_in_use(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| Arc::strong_count(&l.region) > 1)
    }

    /// Unmaps the memory. Refused while in use; a file backend with `discard-data=on`
    /// drops its data first.
    pub fn delete(&mut self) -> Result<()> {
        if self.is_in_use() {
            return Err(Error::InUse(self.id.clone()));
        }
        if let Some(live) = self.live.take() {
            if self.kind == Kind::File && self.cfg.discard_data {
                if let Some(fd) = live.region.mapped.fd.as_ref() {
                    // Best effort like QEMU: the memory goes away regardless.
                    let _ = sys::punch_hole(fd, live.region.mapped.fd_offset, self.len() as u64);
                }
            }
        }
        self.deleted = true;
        Ok(())
    }

    /// Start address of the memory in this process.
    pub fn host_addr(&self) -> Option<usize> {
        self.live.as_ref().map(|l| l.region.mapped.map.addr())
    }

    /// The page size the memory is made of.
    pub fn page_size(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.region.page_size)
    }

    /// What the last preallocation did.
    pub fn prealloc_stats(&self) -> Option<&Stats> {
        self.live.as_ref().and_then(|l| l.prealloc.as_ref())
    }

    /// Path of the temp-file directory or file, for reports.
    pub fn mem_path(&self) -> Option<&PathBuf> {
        self.cfg.mem_path.as_ref()
    }

    /// What the kernel says about the memory now.
    pub fn inspect(&self) -> Result<KernelView> {
        let live = self.live.as_ref().ok_or_else(|| self.not_allocated())?;
        inspect::inspect(&live.region.mapped.map).map_err(|e| Error::Io {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
            what: "reading /proc/self/smaps".into(),
            reason: sys::strerror(&e),
        })
    }

    /// Where each page is, page by page (move_pages): per node, and pages not present.
    pub fn page_nodes(&self) -> Result<(BTreeMap<u32, u64>, u64)> {
        let live = self.live.as_ref().ok_or_else(|| self.not_allocated())?;
        inspect::page_nodes(&live.region.mapped.map, live.region.page_size).map_err(|e| Error::Io {
            kind: self.kind.qom_type(),
            id: self.id.clone(),
            what: "reading page placement".into(),
            reason: sys::strerror(&e),
        })
    }

    /// Whether KSM can merge this memory at all (private anonymous memory only).
    pub fn mergeable_kind(&self) -> bool {
        self.kind == Kind::Ram && !self.cfg.share
    }
}

/// Typed construction of a backend.
#[derive(Debug)]
pub struct Builder {
    backend: Backend,
    error: Option<Error>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $fn:ident($ty:ty) => $name:literal, $wrap:expr;)*) => {
        $( $(#[$doc])* pub fn $fn(self, v: $ty) -> Self { let v = $wrap(v); self.with($name, v) } )*
    };
}

impl Builder {
    fn with(mut self, name: &str, value: PropValue) -> Self {
        if self.error.is_none() {
            if let Err(e) = self.backend.set(name, value) {
                self.error = Some(e);
            }
        }
        self
    }

    setters! {
        /// Size in bytes.
        size(u64) => "size", PropValue::Int;
        merge(bool) => "merge", PropValue::Bool;
        dump(bool) => "dump", PropValue::Bool;
        prealloc(bool) => "prealloc", PropValue::Bool;
        prealloc_threads(u32) => "prealloc-threads", |v| PropValue::Int(v as u64);
        policy(Policy) => "policy", PropValue::Policy;
        host_nodes(NodeSet) => "host-nodes", PropValue::Nodes;
        share(bool) => "share", PropValue::Bool;
        reserve(bool) => "reserve", PropValue::Bool;
        align(u64) => "align", PropValue::Int;
        offset(u64) => "offset", PropValue::Int;
        discard_data(bool) => "discard-data", PropValue::Bool;
        readonly(bool) => "readonly", PropValue::Bool;
        hugetlb(bool) => "hugetlb", PropValue::Bool;
        hugetlbsize(u64) => "hugetlbsize", PropValue::Int;
        seal(bool) => "seal", PropValue::Bool;
    }

    /// File to use, or directory for an unlinked temp file.
    pub fn mem_path(self, path: impl Into<PathBuf>) -> Self {
        let p: PathBuf = path.into();
        self.with("mem-path", PropValue::Str(p.display().to_string()))
    }

    /// The configured backend, not yet allocated.
    pub fn build(self) -> Result<Backend> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.backend),
        }
    }

    /// The backend, allocated.
    pub fn create(self) -> Result<Backend> {
        let mut b = self.build()?;
        b.complete()?;
        Ok(b)
    }
}
