//! The readings of one scrape as OpenMetrics, through prometheus-client's registry and
//! text encoder (docs/exporter.md has the table).
//!
//! A registry is built afresh per scrape from that scrape's readings: a VM that went
//! away leaves no stale series behind, and nothing is cached between scrapes except
//! the error counters (counters must only grow) and the identity a socket last
//! answered with (so a VM that stops answering is still named when it is down).
//!
//! Labels follow node_exporter (`node` for a host NUMA node) and the libvirt exporter
//! (`domain` for the VM's name, from QMP `query-name`), with `pid`, `memdev` (the
//! backend id), `page_size` (bytes) and `source` (the QMP socket, or `host`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use hostmem::limits::{CgroupLimit, Known, Snapshot};
use hostmem::HostTopology;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::collect::{Memdev, VirtioMem, VmReading};

/// A series' labels, in the order they are printed.
pub type Labels = Vec<(&'static str, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFamily = Family<Labels, Counter<u64>>;

/// Every gauge: name (without the unit suffix the encoder adds), unit, help.
const GAUGES: &[(&str, Option<Unit>, &str)] = &[
    ("scrape_source_up", None, "1 when the source (a QMP socket, or host) answered in this scrape, 0 when it did not"),
    ("scrape_source_duration", Some(Unit::Seconds), "Time this scrape spent on the source"),
    ("vm_info", None, "A QEMU behind a QMP socket: its name (query-name), pid and version"),
    ("memdev_info", None, "A memory backend: QOM type, share, requested policy and host nodes, RAM block page size"),
    ("memdev_size", Some(Unit::Bytes), "Size of the memory backend (query-memdev)"),
    ("memdev_page_size", Some(Unit::Bytes), "Page size of the backend's RAM block (info ramblock)"),
    ("memdev_resident", Some(Unit::Bytes), "Resident bytes of the backend's range on each host node (numa_maps)"),
    ("memdev_resident_total", Some(Unit::Bytes), "Resident bytes of the backend's range, huge pages included"),
    ("memdev_thp", Some(Unit::Bytes), "Transparent huge page bytes in the backend's range"),
    ("memdev_hugetlb", Some(Unit::Bytes), "hugetlbfs page bytes in the backend's range"),
    ("memdev_requested_node", None, "1 for each host node the backend's policy asks for (host-nodes)"),
    ("memdev_requested_nodes_resident_ratio", None, "Share of the resident bytes that are on the requested host nodes"),
    ("memdev_placement_error_ratio", None, "Half-width of the 95 % interval of the share on the requested nodes (of the resident fraction of the range without nodes); 0 for a walk"),
    ("memdev_placement_age", Some(Unit::Seconds), "Age of the placement figures at this scrape (0: read during it)"),
    ("memdev_placement_duration", Some(Unit::Seconds), "What reading the backend's placement cost in this scrape"),
    ("virtio_mem_plugged", Some(Unit::Bytes), "Memory a virtio-mem device has plugged (size)"),
    ("virtio_mem_requested", Some(Unit::Bytes), "Memory a virtio-mem device is asked to plug (requested-size)"),
    ("virtio_mem_maximum", Some(Unit::Bytes), "Most memory a virtio-mem device can plug (max-size)"),
    ("virtio_mem_block_size", Some(Unit::Bytes), "Plug granularity of a virtio-mem device (block-size)"),
    ("node_available", Some(Unit::Bytes), "What the host node can still give guest memory: free + reclaimable file and slab - kernel reserve"),
    ("host_available", Some(Unit::Bytes), "The same figure for the whole host"),
    ("node_hugepages", None, "Huge pages of the host node's pool, by page size and state (total, free, surplus)"),
    ("hugepages", None, "Huge pages of the host-wide pool, by page size and state (total, free, reserved, surplus)"),
    ("thp_mode", None, "1 for the host's transparent huge page mode, for anonymous memory (enabled) and shmem (shmem_enabled)"),
    ("cgroup_limit", Some(Unit::Bytes), "The tightest limit over the exporter's cgroup and its ancestors"),
    ("cgroup_available", Some(Unit::Bytes), "What that cgroup may still charge (limit - usage)"),
];

/// One scrape's registry under construction.
pub struct Exposition {
    registry: Registry,
    gauges: BTreeMap<&'static str, GaugeFamily>,
    errors: CounterFamily,
}

impl Default for Exposition {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hostmem");
        let mut gauges = BTreeMap::new();
        for (name, unit, help) in GAUGES {
            let f = GaugeFamily::default();
            match unit {
                Some(u) => registry.register_with_unit(*name, *help, u.clone(), f.clone()),
                None => registry.register(*name, *help, f.clone()),
            }
            gauges.insert(*name, f);
        }
        let errors = CounterFamily::default();
        registry.register(
            "scrape_source_errors",
            "Scrapes in which the source did not answer or a reading failed, since the exporter started",
            errors.clone(),
        );
        Exposition {
            registry,
            gauges,
            errors,
        }
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

impl Exposition {
    /// Sets gauge `name` (one of [`GAUGES`]) for `labels`.
    fn set(&self, name: &str, labels: Labels, v: f64) {
        if let Some(f) = self.gauges.get(name) {
            f.get_or_create(&labels).set(v);
        }
    }

    /// The per-source series of `source` (a socket path or `host`): up, duration, and
    /// its error count since the exporter started.
    pub fn source(&self, source: &str, up: bool, seconds: f64, errors: u64) {
        let l = || vec![("source", s(source))];
        self.set("scrape_source_up", l(), if up { 1.0 } else { 0.0 });
        self.set("scrape_source_duration", l(), seconds);
        self.errors.get_or_create(&l()).inc_by(errors);
    }

    /// One QEMU's series.
    pub fn vm(&self, r: &VmReading) {
        let vm = || {
            vec![
                ("domain", r.who.name.clone()),
                ("pid", r.who.pid.map(s).unwrap_or_default()),
            ]
        };
        if r.who.pid.is_some() {
            let mut l = vm();
            l.insert(0, ("source", s(r.socket.display())));
            l.push(("qemu_version", r.who.version.clone()));
            self.set("vm_info", l, 1.0);
        }
        let Ok(data) = &r.data else { return };
        for m in &data.memdevs {
            self.memdev(vm(), m);
        }
        for d in &data.virtio_mem {
            self.virtio_mem(vm(), d);
        }
    }

    fn memdev(&self, vm: Labels, m: &Memdev) {
        let b = &m.backend;
        let with = |more: &[(&'static str, String)]| {
            let mut l = vm.clone();
            l.push(("memdev", b.id.clone()));
            l.extend(more.iter().cloned());
            l
        };
        let nodes = m.requested_nodes();
        let page = b.block.as_ref().map(|blk| blk.page_size);
        self.set(
            "memdev_info",
            with(&[
                ("type", b.qom_type.clone().unwrap_or_default()),
                ("share", s(b.requested["share"].as_bool().unwrap_or(false))),
                ("policy", s(b.requested["policy"].as_str().unwrap_or(""))),
                (
                    "host_nodes",
                    nodes.iter().map(s).collect::<Vec<_>>().join(","),
                ),
                ("page_size", page.map(s).unwrap_or_default()),
            ]),
            1.0,
        );
        if let Some(size) = b.requested["size"].as_u64() {
            self.set("memdev_size", with(&[]), size as f64);
        }
        if let Some(p) = page {
            self.set("memdev_page_size", with(&[]), p as f64);
        }
        for n in &nodes {
            self.set("memdev_requested_node", with(&[("node", s(n))]), 1.0);
        }
        let Some(Ok(p)) = &m.placement else { return };
        for (n, bytes) in &p.per_node {
            self.set("memdev_resident", with(&[("node", s(n))]), *bytes as f64);
        }
        self.set("memdev_resident_total", with(&[]), p.resident as f64);
        if let Some(thp) = p.thp {
            self.set("memdev_thp", with(&[]), thp as f64);
        }
        if let Some(h) = p.hugetlb {
            self.set("memdev_hugetlb", with(&[]), h as f64);
        }
        if let Some(share) = p.share {
            self.set("memdev_requested_nodes_resident_ratio", with(&[]), share);
        }
        let method = [("method", s(p.method))];
        self.set("memdev_placement_error_ratio", with(&method), p.error);
        self.set("memdev_placement_age", with(&method), p.age_seconds);
        self.set("memdev_placement_duration", with(&method), p.seconds);
    }

    fn virtio_mem(&self, vm: Labels, d: &VirtioMem) {
        let mut l = vm;
        l.extend([
            ("device", d.id.clone().unwrap_or_default()),
            ("memdev", d.memdev.clone()),
            ("guest_node", s(d.node)),
        ]);
        self.set("virtio_mem_plugged", l.clone(), d.plugged as f64);
        self.set("virtio_mem_requested", l.clone(), d.requested as f64);
        self.set("virtio_mem_maximum", l.clone(), d.max as f64);
        self.set("virtio_mem_block_size", l, d.block_size as f64);
    }

    /// The host's series; returns how many of its readings failed.
    pub fn host(&self, t: &HostTopology, lim: &Snapshot) -> u64 {
        let mut failed = 0;
        for (n, room) in &lim.nodes {
            match room {
                Ok(r) => self.set("node_available", vec![("node", s(n))], r.available() as f64),
                Err(_) => failed += 1,
            }
        }
        match &lim.host {
            Ok(r) => self.set("host_available", vec![], r.available() as f64),
            Err(_) => failed += 1,
        }
        for node in &t.nodes {
            for p in &node.huge_pools {
                for (state, v) in [("total", p.total), ("free", p.free), ("surplus", p.surplus)] {
                    let l = vec![
                        ("node", s(node.id)),
                        ("page_size", s(p.page_size)),
                        ("state", s(state)),
                    ];
                    self.set("node_hugepages", l, v as f64);
                }
            }
        }
        for p in &t.huge_pools {
            let states = [
                ("total", p.total),
                ("free", p.free),
                ("reserved", p.reserved),
                ("surplus", p.surplus),
            ];
            for (state, v) in states {
                let l = vec![("page_size", s(p.page_size)), ("state", s(state))];
                self.set("hugepages", l, v as f64);
            }
        }
        for (kind, file) in [("anon", "enabled"), ("shmem", "shmem_enabled")] {
            if let Some(mode) = t.thp.get(file) {
                let l = vec![("kind", s(kind)), ("mode", mode.clone())];
                self.set("thp_mode", l, 1.0);
            }
        }
        failed += self.cgroup("memory", None, &lim.memory_cgroup);
        for (size, c) in &lim.hugetlb_cgroups {
            failed += self.cgroup("hugetlb", Some(*size), c);
        }
        failed
    }

    /// A cgroup limit's series (none when there is no limit); 1 when it is unknown.
    fn cgroup(&self, controller: &str, page: Option<u64>, c: &Known<Option<CgroupLimit>>) -> u64 {
        match c {
            Ok(Some(l)) => {
                let labels = vec![
                    ("controller", s(controller)),
                    ("cgroup", l.cgroup.clone()),
                    ("page_size", page.map(s).unwrap_or_default()),
                ];
                self.set("cgroup_limit", labels.clone(), l.max as f64);
                self.set("cgroup_available", labels, l.room() as f64);
                0
            }
            Ok(None) => 0,
            Err(_) => 1,
        }
    }

    /// OpenMetrics text (`# EOF` included) when `openmetrics`, else the Prometheus
    /// text format 0.0.4 (for clients that do not ask for OpenMetrics: curl, promtool
    /// check metrics, older scrapers); both are prometheus-client's encoders.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}
