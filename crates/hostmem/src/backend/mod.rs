//! The backend object and its life (docs/design.md §1): configured → complete → live →
//! deleted. This file owns the order of the steps; what differs by kind is asked of the
//! kind (`kind::KindOps`), policy rules of `numa::Policy`, pool accounting of
//! `capacity`, and live changes are in `live`.

mod builder;
pub(crate) mod capacity;
pub(crate) mod claim;
mod failure;
mod hold;
mod live;
pub(crate) mod room;
mod share;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use builder::Builder;
pub use hold::InUse;
#[cfg(feature = "vm-memory")]
pub(crate) use hold::NoSafeFd;
pub use live::RebindReport;

use crate::error::{Error, Result, Step};
use crate::inspect::{self, KernelView, Placement};
use crate::kind::{self as kinds, Config};
use crate::kind::{Kind, KindOps, Plan, Target};
use crate::numa::{HostTopology, NodeSet, Policy};
use crate::prealloc::{self, Failure, Job, Progress, Stats};
use crate::props::{self, MachineDefaults, Prop, PropValue};
use crate::sys::{self, advice, mpol, RawMapping};
use hold::Region;

#[derive(Debug)]
struct LiveState {
    region: Arc<Region>,
    prealloc: Option<Stats>,
}

/// Which backend of a batch failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BatchError {
    /// Index of the failing backend in the batch.
    pub index: usize,
    /// Why it failed.
    #[source]
    pub error: Error,
}

/// A host memory backend: `memory-backend-ram`, `-file`, `-memfd` or `-shm`.
#[derive(Debug)]
pub struct Backend {
    id: String,
    cfg: Config,
    live: Option<LiveState>,
    deleted: bool,
    /// Go ahead even where the memory limits say the memory is not there
    /// (`backend/room.rs`): no check before mapping, no watch during prealloc.
    ignore_memory_limits: bool,
}

impl Backend {
    /// A configured backend with the machine defaults; nothing is allocated yet.
    pub fn new(kind: Kind, id: impl Into<String>, defaults: &MachineDefaults) -> Backend {
        Backend {
            id: id.into(),
            cfg: Config::new(kind, defaults),
            live: None,
            deleted: false,
            ignore_memory_limits: defaults.ignore_memory_limits,
        }
    }

    /// Whether this backend skips the memory limit checks (see
    /// [`Backend::set_ignore_memory_limits`]).
    pub fn ignores_memory_limits(&self) -> bool {
        self.ignore_memory_limits
    }

    /// Skips the memory limit checks for this backend: neither the check before
    /// mapping (bound nodes, host, memory and hugetlb cgroups) nor the watch between
    /// prealloc steps, and its memory is not counted for the others of its batch. For
    /// users who know better: memory about to be freed, a limit about to be raised.
    /// Huge page pools are still checked (without the pages nothing can be mapped).
    pub fn set_ignore_memory_limits(&mut self, ignore: bool) {
        self.ignore_memory_limits = ignore;
    }

    /// Typed construction for Rust callers.
    pub fn builder(kind: Kind, id: impl Into<String>) -> Builder {
        Backend::builder_with(kind, id, &MachineDefaults::default())
    }

    /// Like [`Backend::builder`], starting from machine-wide defaults.
    pub fn builder_with(kind: Kind, id: impl Into<String>, defaults: &MachineDefaults) -> Builder {
        Builder {
            backend: Backend::new(kind, id, defaults),
            error: None,
        }
    }

    /// The object id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.cfg.kind()
    }

    /// The settings, typed.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the memory is allocated.
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    fn ops(&self) -> &dyn KindOps {
        self.cfg.kind.ops()
    }

    fn target(&self) -> Target<'_> {
        Target {
            kind: self.kind(),
            id: &self.id,
            common: &self.cfg.common,
        }
    }

    /// The properties this backend has, with their types.
    pub fn properties(&self) -> impl Iterator<Item = &'static Prop> {
        kinds::properties(self.kind())
    }

    pub(crate) fn prop(&self, name: &str) -> Result<&'static Prop> {
        kinds::lookup(self.kind(), name).ok_or_else(|| Error::UnknownProperty {
            kind: self.kind().qom_type(),
            prop: name.to_string(),
        })
    }

    /// Reads a property.
    pub fn get(&self, name: &str) -> Result<PropValue> {
        let prop = self.prop(name)?;
        prop.get(&self.cfg).ok_or_else(|| Error::UnknownProperty {
            kind: self.kind().qom_type(),
            prop: name.to_string(),
        })
    }

    /// Sets a property from its text form (`-object` syntax).
    pub fn set_str(&mut self, name: &str, text: &str) -> Result<()> {
        let value = self.prop(name)?.ty.parse(name, text)?;
        self.set(name, value)
    }

    fn not_allocated(&self) -> Error {
        Error::NotAllocated {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
        }
    }

    fn alloc_error(&self, step: Step, reason: String) -> Error {
        Error::Alloc {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
            step,
            reason,
            source: None,
        }
    }

    /// An allocation step whose system call failed: its errno text, and the error as
    /// the source.
    fn alloc_io_error(&self, step: Step, e: std::io::Error) -> Error {
        Error::Alloc {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
            step,
            reason: sys::strerror(&e),
            source: Some(e),
        }
    }

    /// Size in bytes as set (0 before `size` is set).
    pub fn size(&self) -> u64 {
        self.cfg.common.size
    }

    /// Allocates: validate, map, advise, bind, preallocate (docs/design.md §1). On failure
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
        // Each fits alone; together they must fit the pools too, before any is mapped.
        let items: Vec<(&Backend, &Plan)> = backends.iter().map(|b| &**b).zip(&plans).collect();
        if let Some((i, e)) = capacity::check_batch(&items).into_iter().next() {
            return Err(at(i)(e));
        }
        // The memory limits of the backends being preallocated, summed, then watched.
        let guard = room::Guard::before_mapping(&items, &host).map_err(|(i, e)| at(i)(e))?;
        drop(items);
        let mut placed = Vec::with_capacity(backends.len());
        for (i, (b, plan)) in backends.iter().zip(&plans).enumerate() {
            placed.push(b.map_and_place(plan, &host).map_err(at(i))?);
        }
        let wanted: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].cfg.common.prealloc)
            .collect();
        let mut jobs = Vec::with_capacity(wanted.len());
        for (k, &i) in wanted.iter().enumerate() {
            let b = &backends[i];
            let mut job = b
                .job(&placed[i], &host, b.cfg.common.prealloc_threads)
                .map_err(at(i))?;
            guard.attach(k, &mut job);
            jobs.push(job);
        }
        let results = prealloc::populate(&jobs, progress);
        drop(jobs);
        let mut stats: Vec<Option<Stats>> = vec![None; backends.len()];
        let mut failure: Option<(usize, Failure)> = None;
        for (&i, r) in wanted.iter().zip(results) {
            match r {
                Ok(s) => stats[i] = Some(s),
                // The first real fault explains the batch; aborts follow from it.
                Err(f)
                    if failure
                        .as_ref()
                        .is_none_or(|(_, old)| f.explains_more_than(old)) =>
                {
                    failure = Some((i, f))
                }
                Err(_) => {}
            }
        }
        if let Some((i, f)) = failure {
            let region = &placed[i];
            let (page_size, hugetlb, len) =
                (region.page_size, region.hugetlb, region.mapped.map.len());
            // Undo everything first, so the error reads the pools as they are again.
            drop(placed);
            let error = match &f {
                Failure::Edge(edge) => guard.edge_error(backends[i], edge),
                _ => None,
            };
            let error =
                error.unwrap_or_else(|| backends[i].prealloc_error(f, page_size, hugetlb, len));
            return Err(at(i)(error));
        }
        for ((b, mut region), s) in backends.iter_mut().zip(placed).zip(stats) {
            if let Some(r) = Arc::get_mut(&mut region) {
                r.mapped.created_file.keep();
            }
            b.cfg.kind.ops_mut().settle();
            region.populated.store(s.is_some(), Ordering::Release);
            b.live = Some(LiveState {
                region,
                prealloc: s,
            });
        }
        Ok(())
    }

    /// Every check that can be made before mapping memory, and what they learned (for
    /// `preflight`).
    pub(crate) fn check_plan(&self, host: &HostTopology) -> Result<Plan> {
        self.validate(host)
    }

    /// Every check that can be made before mapping memory.
    fn validate(&self, host: &HostTopology) -> Result<Plan> {
        if self.deleted {
            return Err(self.not_allocated());
        }
        if self.live.is_some() {
            return Err(Error::AlreadyAllocated {
                kind: self.kind().qom_type(),
                id: self.id.clone(),
            });
        }
        if let Some(p) = self
            .properties()
            .find(|p| p.required && p.get(&self.cfg).is_none_or(|v| v.is_unset()))
        {
            return Err(Error::Missing(p.name));
        }
        let c = &self.cfg.common;
        if c.prealloc && !c.reserve {
            return Err(Error::PreallocWithoutReserve);
        }
        self.check_placement(c.policy, &c.host_nodes, host)?;
        let ops = self.ops();
        let mut plan = ops.plan(&self.target())?;
        if !plan.len.is_multiple_of(plan.page_size) {
            // QEMU 10: ram rounds up to the page, the others refuse (since 9.1).
            let rounded = plan
                .len
                .div_ceil(plan.page_size)
                .checked_mul(plan.page_size);
            match rounded {
                Some(len) if ops.rounds_size_up() && usize::try_from(len).is_ok() => plan.len = len,
                _ => {
                    return Err(Error::SizeNotPageMultiple {
                        kind: self.kind().qom_type(),
                        page_size: plan.page_size,
                    })
                }
            }
        }
        // No mapping, and no file (memfd, shm), is larger than isize::MAX bytes.
        if plan.len > isize::MAX as u64 {
            return Err(self.target().invalid(
                &props::Common::SIZE,
                plan.len,
                format!(
                    "larger than any mapping or file can be (at most {} bytes, 8 EiB - 1)",
                    isize::MAX
                ),
            ));
        }
        if plan.hugetlb && !plan.existing_file {
            capacity::check_huge_pages(self, plan.len / plan.page_size, plan.page_size, host)?;
        }
        Ok(plan)
    }

    /// Policy and nodes make sense together, on this kernel and this host.
    fn check_placement(&self, policy: Policy, nodes: &NodeSet, host: &HostTopology) -> Result<()> {
        policy.check_nodes(nodes)?;
        // Probed: mbind took the mode on a scratch page (the version is only named).
        if !host.features.supports(policy) {
            let need = policy.min_kernel();
            return Err(Error::PolicyUnsupported {
                kind: self.kind().qom_type(),
                id: self.id.clone(),
                policy,
                need,
                have: host.kernel_version,
            });
        }
        match host.unusable_node(nodes) {
            Some(why) => Err(Error::BadNode {
                kind: self.kind().qom_type(),
                id: self.id.clone(),
                nodes: nodes.to_string(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// Maps the memory, advises it and applies the NUMA policy.
    fn map_and_place(&self, plan: &Plan, host: &HostTopology) -> Result<Arc<Region>> {
        let c = &self.cfg.common;
        let mapped = self.ops().map(&self.target(), plan)?;
        let map = &mapped.map;
        let advise = |adv| {
            map.madvise(0, map.len(), adv)
                .map_err(|e| self.alloc_io_error(Step::Advise, e))
        };
        // Like QEMU: a child the VMM forks (a helper, a mount) must not share or
        // copy-on-write guest RAM, nor keep its pages alive after the backend goes.
        advise(advice::DONTFORK)?;
        if c.merge {
            // Kernels without KSM refuse; reports show the missing `mg` flag.
            let _ = advise(advice::MERGEABLE);
        }
        if !c.dump {
            advise(advice::DONTDUMP)?;
        }
        bind(map, c.policy, &c.host_nodes, host, false).map_err(Error::Mbind)?;
        Ok(Arc::new(Region {
            mapped,
            page_size: plan.page_size,
            hugetlb: plan.hugetlb,
            shared: c.share,
            claims: Default::default(),
            faults_backed: self.ops().faults_are_backed(c, plan),
            size_promised: Default::default(),
            populated: Default::default(),
        }))
    }

    /// One preallocation job over a region, with the kind's method and the threads
    /// placed on the CPUs of the nodes the memory is bound or preferred to.
    pub(crate) fn job<'a>(
        &self,
        region: &'a Region,
        host: &HostTopology,
        threads: u32,
    ) -> Result<Job<'a>> {
        let c = &self.cfg.common;
        let method = self
            .ops()
            .prealloc_method(c, host.features.populate_write)
            .ok_or_else(|| {
                self.alloc_error(
                    Step::Prealloc,
                    format!(
                        "this kernel ({}) lacks MADV_POPULATE_WRITE (Linux 5.14+) and touching shared or huge page memory could raise SIGBUS",
                        host.kernel_release
                    ),
                )
            })?;
        // A thread-context decides the CPUs (what its thread may run on now, as the
        // kernel says); without one, the CPUs of the nodes the memory goes to.
        let cpus = match &c.prealloc_context.0 {
            Some(ctx) => ctx.cpu_affinity().map_err(|e| {
                self.alloc_error(
                    Step::Prealloc,
                    format!("prealloc-context '{}': {e}", ctx.id()),
                )
            })?,
            None if c.policy.takes_nodes() => host.cpus_of(&c.host_nodes),
            None => Vec::new(),
        };
        Ok(Job {
            map: &region.mapped.map,
            page_size: region.page_size,
            threads: threads as usize,
            cpus,
            method,
            watch: None,
            limits: Vec::new(),
            part: None,
        })
    }

    /// A hold on the memory for a consumer; deletion is refused while it lives.
    pub fn hold(&self) -> Result<InUse> {
        Ok(InUse(self.region()?.clone()))
    }

    fn region(&self) -> Result<&Arc<Region>> {
        Ok(&self
            .live
            .as_ref()
            .ok_or_else(|| self.not_allocated())?
            .region)
    }

    /// Whether a consumer holds the memory.
    pub fn is_in_use(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| Arc::strong_count(&l.region) > 1)
    }

    /// Unmaps the memory. Refused while in use; what else happens is the kind's
    /// (a file backend with `discard-data=on` drops its data first).
    pub fn delete(&mut self) -> Result<()> {
        if self.is_in_use() {
            return Err(Error::InUse(self.id.clone()));
        }
        if let Some(live) = self.live.take() {
            self.ops().on_delete(&live.region.mapped);
        }
        self.deleted = true;
        Ok(())
    }

    /// Start address of the memory in this process.
    pub fn host_addr(&self) -> Option<usize> {
        self.live.as_ref().map(|l| l.region.mapped.map.addr())
    }

    /// Bytes mapped: the size, rounded up to the page where the kind rounds (ram).
    pub fn mapped_len(&self) -> Option<usize> {
        self.live.as_ref().map(|l| l.region.mapped.map.len())
    }

    /// The page size the memory is made of.
    pub fn page_size(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.region.page_size)
    }

    /// Warnings about the memory as mapped (a `pmem=on` file that is not on DAX, ...),
    /// which QEMU prints as warnings; empty before allocation.
    pub fn notes(&self) -> &[String] {
        self.live
            .as_ref()
            .map_or(&[][..], |l| l.region.mapped.notes.as_slice())
    }

    /// What the last preallocation did.
    pub fn prealloc_stats(&self) -> Option<&Stats> {
        self.live.as_ref().and_then(|l| l.prealloc.as_ref())
    }

    /// The file or temp-file directory the memory lives in, for reports.
    pub fn mem_path(&self) -> Option<&Path> {
        self.ops().path()
    }

    /// What the kernel says about the memory now.
    pub fn inspect(&self) -> Result<KernelView> {
        let region = self.region()?;
        inspect::inspect(&region.mapped.map)
            .map_err(|e| self.io_error("reading /proc/self/smaps", &e))
    }

    /// Where each page is, page by page (move_pages): per node, pages not present, and
    /// pages the kernel reported another status for.
    pub fn page_nodes(&self) -> Result<Placement> {
        let region = self.region()?;
        inspect::page_nodes(&region.mapped.map, region.page_size)
            .map_err(|e| self.io_error("reading page placement", &e))
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> Error {
        Error::Io {
            kind: self.kind().qom_type(),
            id: self.id.clone(),
            what: what.into(),
            source: sys::copy_io_error(e),
        }
    }

    /// Whether KSM can merge this memory at all (private anonymous memory only).
    pub fn mergeable_kind(&self) -> bool {
        self.ops().mergeable(&self.cfg.common)
    }
}

/// Applies a policy to a whole mapping. Fresh memory has no pages to move; on a rebind
/// (`strict`) STRICT makes unmovable pages an error instead of a silent partial move.
fn bind(
    map: &RawMapping,
    policy: Policy,
    nodes: &NodeSet,
    host: &HostTopology,
    strict: bool,
) -> std::io::Result<()> {
    let mode = policy.kernel_mode(nodes.len(), host.features.preferred_many);
    let (mask, maxnode) = nodes.to_mask();
    let mut flags = mpol::MF_MOVE;
    if strict || policy.takes_nodes() {
        flags |= mpol::MF_STRICT;
    }
    map.mbind(0, map.len(), mode, &mask, maxnode, flags)
}
