//! `thread-context` objects (QEMU 7.2+): a thread whose CPU affinity new threads
//! inherit. A backend whose `prealloc-context` names one preallocates on exactly the
//! CPUs the context thread may run on now — set through `cpu-affinity` or
//! `node-affinity`, or from outside with `taskset -p` on its `thread-id`, as management
//! tools do with QEMU. Without a context hostmem keeps its automatic node-local threads.
//!
//! The context is a real, sleeping thread of this process, so `thread-id` and
//! `cpu-affinity` read back what the kernel says (sched_getaffinity), not a copy.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::numa::HostTopology;
use crate::sys;

/// QEMU's type name.
pub const QOM_TYPE: &str = "thread-context";

/// The properties a thread-context has, with QEMU's type names for qom-list.
pub const PROPERTIES: &[(&str, &str)] = &[
    ("thread-id", "int"),
    ("node-affinity", "int"),
    ("cpu-affinity", "int"),
];

/// The running context thread: asleep until told to stop.
#[derive(Debug)]
struct Running {
    tid: i32,
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Affinity asked for before the thread exists (QEMU's init_cpu_bitmap).
    pending: Option<Vec<usize>>,
    running: Option<Running>,
}

/// A thread-context object. Shared (`Arc`) by the backends that name it, which keep it
/// alive after it is deleted, as QEMU's link properties do.
pub struct ThreadContext {
    id: String,
    state: Mutex<State>,
    /// Deleted from its container: links to it still work, but read as empty.
    detached: AtomicBool,
}

impl fmt::Debug for ThreadContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadContext")
            .field("id", &self.id)
            .field("thread_id", &self.thread_id())
            .finish()
    }
}

/// One CPU or node list property of a thread-context, as QEMU's uint16List takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// `cpu-affinity`: these CPUs.
    Cpus,
    /// `node-affinity`: the CPUs of these nodes (nodes that do not exist are ignored).
    Nodes,
}

impl Affinity {
    /// The property's name.
    pub fn name(self) -> &'static str {
        match self {
            Affinity::Cpus => "cpu-affinity",
            Affinity::Nodes => "node-affinity",
        }
    }

    /// The affinity property called `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Affinity> {
        [Affinity::Cpus, Affinity::Nodes]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// Parses a keyval list value: `0`, `0-3`, `0,2` (QEMU's ranges for uint16 lists).
pub fn parse_u16_list(prop: &str, text: &str) -> Result<Vec<u16>> {
    let bad = || Error::BadType {
        prop: prop.to_string(),
        expected: "a list of uint16 values or ranges (0-3)",
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
            None => (item.parse::<u16>(), item.parse::<u16>()),
        };
        let (lo, hi) = (lo.map_err(|_| bad())?, hi.map_err(|_| bad())?);
        if lo > hi {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ThreadContext {
    /// A configured context; its thread starts at [`ThreadContext::complete`].
    pub fn new(id: impl Into<String>) -> ThreadContext {
        ThreadContext {
            id: id.into(),
            state: Mutex::new(State::default()),
            detached: AtomicBool::new(false),
        }
    }

    /// The object id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The context was deleted from its container (QMP `object-del`). Like QEMU, the
    /// backends that name it keep it, thread and all, but their link reads as empty.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// Sets `cpu-affinity` or `node-affinity`, with QEMU's rules and messages: an empty
    /// list is refused, nodes must select some CPU, and before the thread exists only
    /// one of them may be given.
    pub fn set_affinity(&self, which: Affinity, ids: &[u16]) -> Result<()> {
        let mut st = lock(&self.state);
        if st.running.is_none() && st.pending.is_some() {
            return Err(Error::Context(
                "Mixing CPU and node affinity not supported".into(),
            ));
        }
        let cpus: Vec<usize> = match which {
            Affinity::Cpus if ids.is_empty() => {
                return Err(Error::Context("CPU list is empty".into()))
            }
            Affinity::Cpus => ids.iter().map(|&c| usize::from(c)).collect(),
            Affinity::Nodes if ids.is_empty() => {
                return Err(Error::Context("Node list is empty".into()))
            }
            Affinity::Nodes => {
                let host = HostTopology::read();
                let mut cpus: Vec<usize> = ids
                    .iter()
                    .filter_map(|&n| host.node(u32::from(n)))
                    .flat_map(|n| n.cpus.iter().copied())
                    .collect();
                cpus.sort_unstable();
                cpus.dedup();
                if cpus.is_empty() {
                    return Err(Error::Context("The nodes select no CPUs".into()));
                }
                cpus
            }
        };
        match &st.running {
            Some(r) => sys::set_thread_affinity(r.tid, &cpus).map_err(affinity_failed),
            None => {
                st.pending = Some(cpus);
                Ok(())
            }
        }
    }

    /// Starts the context thread and gives it the affinity asked for.
    pub fn complete(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if st.running.is_some() {
            return Ok(());
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("TC {}", self.id))
            .stack_size(64 << 10)
            .spawn(move || {
                let _ = tid_tx.send(sys::gettid());
                // Sleeps until the context is dropped (the sender goes or says stop).
                let _ = stopped.recv();
            })
            .map_err(|e| Error::Context(format!("cannot create the context thread: {e}")))?;
        let tid = tid_rx
            .recv()
            .map_err(|_| Error::Context("the context thread ended at once".into()))?;
        let running = Running {
            tid,
            stop,
            handle: Some(handle),
        };
        if let Some(cpus) = st.pending.take() {
            // The thread ends with `running` if its affinity cannot be set.
            sys::set_thread_affinity(tid, &cpus).map_err(affinity_failed)?;
        }
        st.running = Some(running);
        Ok(())
    }

    /// The context thread's kernel id (`thread-id`); None before completion (QEMU
    /// reports -1 as an unsigned number then).
    pub fn thread_id(&self) -> Option<i32> {
        lock(&self.state).running.as_ref().map(|r| r.tid)
    }

    /// The CPUs the context thread may run on now, read from the kernel.
    pub fn cpu_affinity(&self) -> Result<Vec<usize>> {
        let tid = self
            .thread_id()
            .ok_or_else(|| Error::Context("Object not initialized yet".into()))?;
        sys::thread_affinity(tid).map_err(|e| {
            Error::Context(format!(
                "Getting CPU affinity failed: {}",
                sys::strerror(&e)
            ))
        })
    }
}

fn affinity_failed(e: std::io::Error) -> Error {
    Error::Context(format!(
        "Setting CPU affinity failed: {}",
        sys::strerror(&e)
    ))
}

impl From<Arc<ThreadContext>> for ContextLink {
    fn from(c: Arc<ThreadContext>) -> Self {
        ContextLink(Some(c))
    }
}

/// A backend's `prealloc-context`: the context it names, or none. Equal when both name
/// the same object.
#[derive(Debug, Clone, Default)]
pub struct ContextLink(pub Option<Arc<ThreadContext>>);

impl PartialEq for ContextLink {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ContextLink {
    /// The canonical path QEMU's qom-get gives a link (`/objects/ID`), or empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(c) if !c.detached.load(Ordering::SeqCst) => write!(f, "/objects/{}", c.id()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_take_qemu_ranges() {
        assert_eq!(
            parse_u16_list("cpu-affinity", "0-2,5").unwrap(),
            [0, 1, 2, 5]
        );
        assert!(parse_u16_list("cpu-affinity", "3-1").is_err());
        assert!(parse_u16_list("cpu-affinity", "70000").is_err());
    }

    #[test]
    fn the_context_thread_takes_the_affinity_the_kernel_then_reports() {
        let tc = ThreadContext::new("tc");
        assert!(tc.cpu_affinity().is_err(), "not initialized yet");
        tc.set_affinity(Affinity::Cpus, &[0]).unwrap();
        assert_eq!(
            tc.set_affinity(Affinity::Nodes, &[0])
                .unwrap_err()
                .to_string(),
            "Mixing CPU and node affinity not supported"
        );
        tc.complete().unwrap();
        let tid = tc.thread_id().unwrap();
        assert_ne!(tid, sys::gettid());
        assert_eq!(sys::thread_affinity(tid).unwrap(), [0]);
        assert_eq!(tc.cpu_affinity().unwrap(), [0]);
        // After completion a new affinity moves the thread.
        let all = sys::allowed_cpus();
        let all16: Vec<u16> = all.iter().map(|&c| c as u16).collect();
        tc.set_affinity(Affinity::Cpus, &all16).unwrap();
        assert_eq!(tc.cpu_affinity().unwrap(), all);
    }

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    #[test]
    fn the_context_thread_ends_with_the_last_reference() {
        let tc = Arc::new(ThreadContext::new("dropme"));
        tc.complete().unwrap();
        assert_eq!(threads_named("TC dropme"), 1);
        let link = ContextLink::from(tc.clone());
        drop(tc);
        assert_eq!(threads_named("TC dropme"), 1, "a link keeps it");
        drop(link);
        assert_eq!(threads_named("TC dropme"), 0);
    }

    #[test]
    fn links_compare_by_object_and_read_empty_once_detached() {
        let a = Arc::new(ThreadContext::new("a"));
        let b = Arc::new(ThreadContext::new("a"));
        assert_eq!(ContextLink::from(a.clone()), ContextLink::from(a.clone()));
        assert_ne!(ContextLink::from(a.clone()), ContextLink::from(b));
        assert_ne!(ContextLink::from(a.clone()), ContextLink::default());
        assert_eq!(ContextLink::default(), ContextLink::default());
        let link = ContextLink::from(a.clone());
        assert_eq!(link.to_string(), "/objects/a");
        a.detach();
        assert_eq!(link.to_string(), "");
        assert_eq!(Affinity::from_name("node-affinity"), Some(Affinity::Nodes));
        assert_eq!(Affinity::from_name("cpu-affinity"), Some(Affinity::Cpus));
        assert_eq!(Affinity::from_name("thread-id"), None);
    }

    #[test]
    fn empty_lists_and_nodes_without_cpus_get_qemus_messages() {
        let tc = ThreadContext::new("tc");
        assert_eq!(
            tc.set_affinity(Affinity::Cpus, &[])
                .unwrap_err()
                .to_string(),
            "CPU list is empty"
        );
        assert_eq!(
            tc.set_affinity(Affinity::Nodes, &[])
                .unwrap_err()
                .to_string(),
            "Node list is empty"
        );
        assert_eq!(
            tc.set_affinity(Affinity::Nodes, &[999])
                .unwrap_err()
                .to_string(),
            "The nodes select no CPUs"
        );
    }
}
