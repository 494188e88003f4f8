//! One scrape's readings of every QEMU: each socket asked on a thread of its own, all
//! at once, and the scrape waits for them only until the per-VM deadline.
//!
//! Why threads and a deadline rather than the sockets' timeouts alone: a QEMU that is
//! stopped (SIGSTOP, a hung main loop) accepts the connection in the kernel and then
//! says nothing, and one that answers slowly can take a timeout per command. The
//! scrape must answer within its own timeout whatever one VM does, so a VM that has
//! not answered by the deadline is reported down and its thread is left to end on its
//! socket's timeout. A socket whose previous collection is still running is not asked
//! again (QEMU serves one client per monitor, and threads must not pile up on a hung
//! VM): it is down for this scrape too, saying so.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostmem::Process;
use serde_json::{json, Value};

use super::placement::{self, Placement};
use crate::vm::client::QmpClient;
use crate::vm::error::VmError;
use crate::vm::ramblock::RamBlock;
use crate::vm::snapshot::{self, VmBackend};
pub use crate::vm::virtio_mem::VirtioMem;

/// A memory device (`query-memdev`) and where its pages are.
#[derive(Debug)]
pub struct Memdev {
    /// The backend as QEMU reports it (id, QOM type, requested settings, RAM block).
    pub backend: VmBackend,
    /// Its placement; None when it backs no RAM block; Err: why it could not be read.
    pub placement: Option<Result<Placement, String>>,
}

impl Memdev {
    /// The requested host nodes (`host-nodes`), empty for policy default.
    pub fn requested_nodes(&self) -> Vec<u32> {
        requested_nodes(&self.backend.requested)
    }
}

/// The `host-nodes` of a `query-memdev` entry.
fn requested_nodes(requested: &Value) -> Vec<u32> {
    requested["host-nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// What one QEMU said, when it answered in time.
#[derive(Debug)]
pub struct VmData {
    /// Memory devices in id order.
    pub memdevs: Vec<Memdev>,
    /// virtio-mem devices (`hostmem vm`'s reading of `query-memory-devices`).
    pub virtio_mem: Vec<VirtioMem>,
}

/// Who a socket belongs to, as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The VM's name (`query-name`; empty when QEMU has no `-name`).
    pub name: String,
    /// QEMU's pid (the socket's peer credentials).
    pub pid: Option<u32>,
    /// QEMU's version from the greeting.
    pub version: String,
}

/// One socket's outcome in one scrape.
#[derive(Debug)]
pub struct VmReading {
    /// The socket path (the `source` label).
    pub socket: PathBuf,
    /// Who answered this time, or last time it answered when it did not now.
    pub who: Identity,
    /// The readings, or why there are none.
    pub data: Result<VmData, String>,
    /// Seconds this socket took (up to the deadline).
    pub seconds: f64,
}

/// Sockets with a collection still running, shared by the scrapes.
#[derive(Debug, Default, Clone)]
pub struct Busy(Arc<Mutex<HashSet<PathBuf>>>);

impl Busy {
    fn claim(&self, p: &Path) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.into())
    }

    fn release(&self, p: &Path) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(p);
    }
}

/// Asks every socket at once; returns each one's reading within `timeout` of the start.
/// `known` holds the identity each socket last answered with (updated here).
pub fn vms(
    sockets: &[PathBuf],
    timeout: Duration,
    busy: &Busy,
    known: &Mutex<BTreeMap<PathBuf, Identity>>,
) -> Vec<VmReading> {
    let start = Instant::now();
    let deadline = start + timeout;
    let (tx, rx) = mpsc::channel();
    let mut pending: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::new();
    for s in sockets {
        if !busy.claim(s) {
            out.push((
                s.clone(),
                Err(format!(
                "the previous collection from {} has not ended yet (no answer within the timeout)",
                s.display()
            )),
                0.0,
            ));
            continue;
        }
        pending.insert(s.clone());
        let (path, tx, owner) = (s.clone(), tx.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("hostmem-vm".into())
            .spawn(move || {
                let t = Instant::now();
                let r = one(&path, timeout);
                owner.release(&path);
                let _ = tx.send((path, r, t.elapsed().as_secs_f64()));
            });
        if let Err(e) = spawned {
            busy.release(s);
            pending.remove(s);
            out.push((s.clone(), Err(format!("cannot start a thread: {e}")), 0.0));
        }
    }
    drop(tx);
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((s, r, secs)) => {
                pending.remove(&s);
                out.push((s, r, secs));
            }
            Err(_) => break,
        }
    }
    let waited = start.elapsed().as_secs_f64();
    for s in pending {
        let why = format!("no answer within {} s", timeout.as_secs_f64());
        out.push((s, Err(why), waited));
    }
    let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
    let mut readings: Vec<VmReading> = out
        .into_iter()
        .map(|(socket, r, seconds)| {
            let (who, data) = match r {
                Ok((who, data)) => {
                    known.insert(socket.clone(), who.clone());
                    (who, Ok(data))
                }
                Err(e) => (known.get(&socket).cloned().unwrap_or_default(), Err(e)),
            };
            VmReading {
                socket,
                who,
                data,
                seconds,
            }
        })
        .collect();
    readings.sort_by(|a, b| a.socket.cmp(&b.socket));
    readings
}

/// One socket: QMP, then the kernel's view of each memory device.
fn one(socket: &Path, timeout: Duration) -> Result<(Identity, VmData), String> {
    let mut c = QmpClient::connect(socket, timeout).map_err(|e| e.to_string())?;
    let pid = c.pid;
    let exited = |e: VmError| e.or_exited(pid).to_string();
    let name = c
        .execute("query-name", json!({}))
        .map_err(|e| exited(e.into()))?;
    let who = Identity {
        name: name["name"].as_str().unwrap_or("").to_string(),
        pid: Some(c.pid),
        version: c.version.to_string(),
    };
    let snap = snapshot::take(&mut c).map_err(exited)?;
    // The socket is not needed for the kernel's part: QEMU may take the next client.
    drop(c);
    let process = Process::new(pid).map_err(|e| VmError::from(e).to_string())?;
    // Every memdev with a RAM block, read in one pass over the process.
    let nodes: Vec<Vec<u32>> = snap
        .backends
        .iter()
        .map(|b| requested_nodes(&b.requested))
        .collect();
    let with_block: Vec<(usize, (&RamBlock, &[u32]))> = snap
        .backends
        .iter()
        .zip(&nodes)
        .enumerate()
        .filter_map(|(i, (b, n))| Some((i, (b.block.as_ref()?, n.as_slice()))))
        .collect();
    let blocks: Vec<(&RamBlock, &[u32])> = with_block.iter().map(|(_, x)| *x).collect();
    let mut read: Vec<Option<Result<Placement, String>>> = vec![None; snap.backends.len()];
    for ((i, _), r) in with_block.iter().zip(placement::read_all(pid, &blocks)) {
        let id = &snap.backends[*i].id;
        read[*i] = Some(r.map_err(|e| {
            if process.is_alive() {
                format!("reading where memdev {id} is in process {pid}: {e}")
            } else {
                VmError::Exited { pid }.to_string()
            }
        }));
    }
    let virtio_mem = snap
        .backends
        .iter()
        .flat_map(|b| b.virtio_mem.iter().cloned())
        .collect();
    let memdevs = snap
        .backends
        .into_iter()
        .zip(read)
        .map(|(b, placement)| Memdev {
            placement,
            backend: b,
        })
        .collect();
    Ok((
        who,
        VmData {
            memdevs,
            virtio_mem,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_nobody_listens_on_is_down_with_the_kernels_reason() {
        let dir = std::env::temp_dir().join(format!("hostmem-exporter-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("none.qmp");
        let known = Mutex::new(BTreeMap::new());
        let r = vms(
            std::slice::from_ref(&sock),
            Duration::from_secs(2),
            &Busy::default(),
            &known,
        );
        assert_eq!(r.len(), 1);
        let e = r[0].data.as_ref().unwrap_err();
        assert!(
            e.contains("cannot connect") && e.contains("none.qmp"),
            "{e}"
        );
        assert_eq!(r[0].who, Identity::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_socket_still_busy_is_not_asked_again() {
        let busy = Busy::default();
        let sock = PathBuf::from("/nonexistent/busy.qmp");
        assert!(busy.claim(&sock));
        let known = Mutex::new(BTreeMap::new());
        let r = vms(
            std::slice::from_ref(&sock),
            Duration::from_secs(2),
            &busy,
            &known,
        );
        let e = r[0].data.as_ref().unwrap_err();
        assert!(e.contains("has not ended yet"), "{e}");
    }
}
