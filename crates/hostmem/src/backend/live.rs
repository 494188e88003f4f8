//! Changes to a live backend: properties that take effect at once, preallocation now,
//! and the atomic rebind of policy and nodes (docs/design.md §1, live changes).

use std::collections::BTreeMap;
use std::time::Instant;

use super::{bind, capacity, Backend};
use crate::error::{Error, Result, Step};
use crate::inspect;
use crate::numa::{HostTopology, NodeSet, Policy};
use crate::prealloc::{self, Progress};
use crate::props::{Common, Live, PropValue};
use crate::sys::advice;

/// Where the pages of a backend are after a rebind, read back page by page.
#[derive(Debug, Clone, PartialEq)]
pub struct RebindReport {
    /// Present pages per node (move_pages).
    pub pages_per_node: BTreeMap<u32, u64>,
    /// Pages not faulted in.
    pub pages_absent: u64,
    /// Pages move_pages gave another status for (errno → count).
    pub pages_other: BTreeMap<i32, u64>,
    /// Present pages on the target nodes.
    pub pages_on_target: u64,
    /// Present pages in all.
    pub pages_present: u64,
    /// Time the move and the read-back took.
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

impl Backend {
    /// Sets a property. On a live backend, `merge`, `dump`, `prealloc` (off→on
    /// preallocates now), `prealloc-threads` and `discard-data` take effect at once;
    /// placement changes only through [`Backend::rebind`]; the rest are fixed.
    pub fn set(&mut self, name: &str, value: PropValue) -> Result<()> {
        self.set_with(name, value, &Progress::new())
    }

    /// Refuses, without a value, a change of a property that is fixed once the memory
    /// exists: for callers that must refuse before they read the value (QEMU's QMP
    /// refuses a live `size` first).
    pub fn refuse_live_change(&self, name: &str) -> Result<()> {
        let prop = self.prop(name)?;
        if self.live.is_some() && prop.live == Live::Fixed {
            return Err(Error::FixedAfterAllocation {
                kind: self.kind().qom_type(),
                id: self.id.clone(),
                prop: prop.name,
            });
        }
        Ok(())
    }

    /// [`Backend::set`] with progress and cancellation for what a live change may do
    /// at length (prealloc off→on).
    pub fn set_with(&mut self, name: &str, value: PropValue, progress: &Progress) -> Result<()> {
        let prop = self.prop(name)?;
        if self.deleted {
            return Err(self.not_allocated());
        }
        if self.live.is_none() {
            return prop.store(&mut self.cfg, value);
        }
        self.refuse_live_change(name)?;
        match prop.live {
            Live::Fixed => Ok(()),
            // Setting the value it already has changes nothing and is harmless.
            Live::Rebind if prop.get(&self.cfg).as_ref() == Some(&value) => Ok(()),
            Live::Rebind => Err(Error::PlacementNeedsRebind {
                id: self.id.clone(),
                prop: prop.name,
            }),
            Live::Immediate => {
                let mut next = self.cfg.clone();
                prop.store(&mut next, value)?;
                // Like QEMU: memory once preallocated stays so; prealloc on→off
                // changes nothing, not even the property.
                next.common.prealloc |= self.cfg.common.prealloc;
                self.apply_live(&next.common, progress)?;
                self.cfg = next;
                Ok(())
            }
        }
    }

    fn apply_live(&mut self, next: &Common, progress: &Progress) -> Result<()> {
        let now = &self.cfg.common;
        let mut advices = Vec::new();
        if next.merge != now.merge {
            advices.push(if next.merge {
                advice::MERGEABLE
            } else {
                advice::UNMERGEABLE
            });
        }
        if next.dump != now.dump {
            advices.push(if next.dump {
                advice::DODUMP
            } else {
                advice::DONTDUMP
            });
        }
        let map = &self.region()?.mapped.map;
        for adv in advices {
            match map.madvise(0, map.len(), adv) {
                Ok(()) => {}
                // KSM advice on memory KSM cannot merge (shared, hugetlb) or a kernel
                // without KSM: the kernel view shows whether `mg` took, and reports say so.
                Err(_) if adv == advice::MERGEABLE || adv == advice::UNMERGEABLE => {}
                Err(e) => return Err(self.alloc_io_error(Step::Advise, e)),
            }
        }
        if next.prealloc && !now.prealloc {
            self.prealloc_now(next.prealloc_threads, progress)?;
        }
        Ok(())
    }

    /// Preallocates a live backend now (prealloc off→on).
    pub fn prealloc_now(&mut self, threads: u32, progress: &Progress) -> Result<()> {
        let host = HostTopology::read();
        let region = self.region()?.clone();
        // Without a reservation nothing holds the pages: refuse a shortage before
        // faulting any in, so a failure leaves the pool as it was (the pages already
        // there are the guest's and stay).
        if region.hugetlb && !self.cfg.common.reserve {
            let absent = inspect::page_nodes(&region.mapped.map, region.page_size)
                .map_err(|e| self.io_error("reading page placement", &e))?
                .absent;
            capacity::check_pool(self, absent, region.page_size, &host, true)?;
        }
        let job = self.job(&region, &host, threads)?;
        let r = prealloc::populate(std::slice::from_ref(&job), progress).pop();
        match r {
            Some(Ok(s)) => {
                region
                    .populated
                    .store(true, std::sync::atomic::Ordering::Release);
                if let Some(l) = self.live.as_mut() {
                    l.prealloc = Some(s);
                }
                self.cfg.common.prealloc = true;
                Ok(())
            }
            Some(Err(f)) => {
                let len = region.mapped.map.len();
                Err(self.prealloc_error(f, region.page_size, region.hugetlb, len))
            }
            None => Ok(()),
        }
    }

    /// Changes placement of a live backend as one operation: policy and nodes together,
    /// existing pages migrated (MPOL_MF_MOVE), then read back page by page.
    ///
    /// If the move fails part-way (pages that cannot migrate), the previous policy is
    /// put back so the backend's settings and the kernel's policy agree again; the
    /// error says so, and pages already moved stay where they went.
    pub fn rebind(&mut self, policy: Policy, nodes: NodeSet) -> Result<RebindReport> {
        let host = HostTopology::read();
        self.check_placement(policy, &nodes, &host)?;
        let region = self.region()?.clone();
        let map = &region.mapped.map;
        let start = Instant::now();
        if let Err(e) = bind(map, policy, &nodes, &host, true) {
            let (old_policy, old_nodes) =
                (self.cfg.common.policy, self.cfg.common.host_nodes.clone());
            // Put the old policy back without moving anything (no MOVE, no STRICT).
            let mode = old_policy.kernel_mode(old_nodes.len(), host.features.preferred_many);
            let (mask, maxnode) = old_nodes.to_mask();
            let restored = map.mbind(0, map.len(), mode, &mask, maxnode, 0);
            if restored.is_err() {
                // The kernel kept the new policy: say so in the settings too.
                self.cfg.common.policy = policy;
                self.cfg.common.host_nodes = nodes.clone();
            }
            return Err(Error::RebindFailed {
                id: self.id.clone(),
                policy,
                nodes: nodes.to_string(),
                source: e,
                now: if restored.is_ok() {
                    format!("{old_policy} {old_nodes}")
                } else {
                    format!("{policy} {nodes}")
                },
            });
        }
        self.cfg.common.policy = policy;
        self.cfg.common.host_nodes = nodes.clone();
        let placed = self.page_nodes()?;
        let present = placed.present();
        let on_target = if nodes.is_empty() {
            present
        } else {
            placed
                .per_node
                .iter()
                .filter(|(n, _)| nodes.contains(**n))
                .map(|(_, c)| c)
                .sum()
        };
        Ok(RebindReport {
            pages_per_node: placed.per_node,
            pages_absent: placed.absent,
            pages_other: placed.other,
            pages_on_target: on_target,
            pages_present: present,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
