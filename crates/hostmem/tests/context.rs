//! thread-context and prealloc-context: the prealloc threads run where the context
//! thread may run, as the kernel reports it (sched_getcpu inside each thread, and
//! sched_getaffinity of the context thread), also after its affinity is changed from
//! outside the way management tools do it (`taskset -p` on the thread id).

mod common;

use std::sync::Arc;

use common::MIB;
use hostmem::context::Affinity;
use hostmem::{Backend, Kind, ThreadContext};
use rustix::process::Pid;
use rustix::thread::{sched_setaffinity, CpuSet};

fn cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism().unwrap().get();
    (0..n).collect()
}

fn context(cpu: usize) -> Arc<ThreadContext> {
    let tc = Arc::new(ThreadContext::new("tc"));
    tc.set_affinity(Affinity::Cpus, &[cpu as u16]).unwrap();
    tc.complete().unwrap();
    tc
}

#[test]
fn prealloc_threads_run_on_the_contexts_cpus() {
    let last = *cpus().last().unwrap();
    let tc = context(last);
    let b = Backend::builder(Kind::Ram, "r")
        .size(256 * MIB)
        .prealloc(true)
        .prealloc_threads(4)
        .prealloc_context(tc.clone())
        .create()
        .unwrap();
    let s = b.prealloc_stats().unwrap();
    assert_eq!(s.cpus_seen, [last], "threads ran on {:?}", s.cpus_seen);
    assert_eq!(
        b.get("prealloc-context").unwrap().to_string(),
        "/objects/tc"
    );
}

#[test]
fn an_affinity_set_from_outside_is_followed() {
    let all = cpus();
    if all.len() < 2 {
        panic!("this test needs two CPUs to move the context between them");
    }
    let tc = context(0);
    // What `taskset -p -c 1 TID` does.
    let mut one = CpuSet::new();
    one.set(1);
    let tid = Pid::from_raw(tc.thread_id().unwrap()).unwrap();
    sched_setaffinity(Some(tid), &one).unwrap();
    assert_eq!(tc.cpu_affinity().unwrap(), [1]);
    let b = Backend::builder(Kind::Ram, "r")
        .size(128 * MIB)
        .prealloc(true)
        .prealloc_threads(2)
        .prealloc_context(tc)
        .create()
        .unwrap();
    assert_eq!(b.prealloc_stats().unwrap().cpus_seen, [1]);
}

#[test]
fn a_context_that_never_started_is_an_error_naming_it() {
    let tc = Arc::new(ThreadContext::new("tc"));
    let mut b = Backend::builder(Kind::Ram, "r")
        .size(8 * MIB)
        .prealloc(true)
        .prealloc_context(tc)
        .build()
        .unwrap();
    let e = b.complete().unwrap_err().to_string();
    assert!(
        e.contains("prealloc-context 'tc': Object not initialized yet"),
        "{e}"
    );
    assert!(!b.is_live());
}
