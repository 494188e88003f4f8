//! One look at a running QEMU: its memory backends (`query-memdev`: id and the
//! requested settings), their QOM types (`qom-list /objects`), and the RAM block each
//! backs (`info ramblock`: host address and length in QEMU's memory), and the
//! virtio-mem devices each backs (`query-memory-devices`).

use serde_json::{json, Value};

use super::client::QmpClient;
use super::error::VmError;
use super::ramblock::{self, RamBlock};
use super::virtio_mem::{self, MemoryDevices, VirtioMem};

/// A memory backend of the VM.
#[derive(Debug, Clone)]
pub struct VmBackend {
    /// Its id.
    pub id: String,
    /// `memory-backend-ram`, ...; None when `qom-list` did not list it.
    pub qom_type: Option<String>,
    /// What `query-memdev` says was asked for (size, policy, host-nodes, prealloc, ...).
    pub requested: Value,
    /// The RAM block it backs; None when it backs none.
    pub block: Option<RamBlock>,
    /// The virtio-mem devices whose memdev it is (QEMU allows one).
    pub virtio_mem: Vec<VirtioMem>,
}

impl VmBackend {
    /// The requested policy with its nodes (`bind:0`, `default`).
    pub fn requested_policy(&self) -> String {
        let policy = self.requested["policy"].as_str().unwrap_or("?");
        let nodes: Vec<String> = self.requested["host-nodes"]
            .as_array()
            .map(|a| a.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        if nodes.is_empty() {
            policy.to_string()
        } else {
            format!("{policy}:{}", nodes.join(","))
        }
    }
}

/// The VM's backends at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Backends in id order.
    pub backends: Vec<VmBackend>,
    /// RAM blocks with no name: a backend attached to nothing gets one, so each is
    /// some unattached backend's memory, which one QEMU does not say.
    pub unnamed_blocks: Vec<RamBlock>,
    /// The memory devices (DIMMs, virtio-mem, ...).
    pub devices: MemoryDevices,
}

impl Snapshot {
    /// The backend `id`, or an error listing the ids there are.
    pub fn backend(&self, id: &str) -> Result<&VmBackend, VmError> {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| VmError::UnknownBackend {
                id: id.into(),
                known: self
                    .backends
                    .iter()
                    .map(|b| b.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Asks QEMU now.
pub fn take(c: &mut QmpClient) -> Result<Snapshot, VmError> {
    let memdevs = c.execute("query-memdev", json!({}))?;
    let memdevs = memdevs.as_array().ok_or_else(|| VmError::Reply {
        command: "query-memdev",
        why: format!("not a list: {memdevs}"),
    })?;
    // qom-list of /objects names each child with its type: `child<memory-backend-ram>`.
    let objects = c.execute("qom-list", json!({"path": "/objects"}))?;
    let type_of = |id: &str| {
        objects.as_array()?.iter().find_map(|o| {
            if o["name"].as_str()? != id {
                return None;
            }
            let t = o["type"].as_str()?;
            Some(t.strip_prefix("child<")?.strip_suffix('>')?.to_string())
        })
    };
    let version = c.version.to_string();
    let blocks = ramblock::parse(&c.hmp("info ramblock")?, &version)?;
    let devices = virtio_mem::query(c)?;
    let mut backends = Vec::new();
    for m in memdevs {
        let Some(id) = m["id"].as_str() else {
            // QEMU before 2.x listed backends without ids; nothing to name them by.
            continue;
        };
        backends.push(VmBackend {
            id: id.to_string(),
            qom_type: type_of(id),
            requested: m.clone(),
            block: blocks
                .iter()
                .find(|b| b.backend_id() == Some(id) && !b.read_only)
                .cloned(),
            virtio_mem: devices
                .virtio_mem
                .iter()
                .filter(|d| d.memdev == id)
                .cloned()
                .collect(),
        });
    }
    backends.sort_by(|a, b| a.id.cmp(&b.id));
    let unnamed_blocks = blocks.into_iter().filter(|b| b.name.is_empty()).collect();
    Ok(Snapshot {
        backends,
        unnamed_blocks,
        devices,
    })
}
