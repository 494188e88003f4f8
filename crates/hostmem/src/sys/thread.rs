//! The calling thread and process: CPU affinity, the CPU it runs on,

use std::io;

use super::check;

/// CPUs this thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpus`.
pub(crate) fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    set_thread_affinity(0, cpus)
}

/// Sets the CPUs thread `tid` of this process may run on (0: the calling thread).
/// CPUs past CPU_SETSIZE are left out; a set with no CPU the kernel allows is EINVAL.
pub(crate) fn set_thread_affinity(tid: i32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data, valid zeroed; we only set bits below
    // CPU_SETSIZE; sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        check(libc::sched_setaffinity(
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// The CPUs thread `tid` may run on, as the kernel has them now.
pub(crate) fn thread_affinity(tid: i32) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it and we read it only
    // on success.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        check(libc::sched_getaffinity(
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        ))?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// The kernel's id of the calling thread (what `thread-id` and taskset show).
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The CPU the calling thread runs on now.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns a CPU number or -1.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as usize)
}

/// How the calling thread competes for a CPU with the process's other threads.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuShare {
    /// SCHED_IDLE: runs only when no normal thread of its CPU wants to, and any
    /// normal thread that wakes preempts it at once.
    Idle,
    /// SCHED_OTHER at this nice value (19: the least share; lower needs CAP_SYS_NICE).
    Nice(i32),
}

/// Sets the calling thread's scheduling to `share` (Linux applies both calls to the
/// calling thread alone when given id 0).
#[cfg(feature = "json")]
pub(crate) fn set_current_thread_share(share: CpuShare) -> io::Result<()> {
    match share {
        CpuShare::Idle => {
            let p = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler reads one sched_param, ours, for the call;
            // pid 0 is the calling thread.
            check(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) })?;
        }
        CpuShare::Nice(n) => {
            // SAFETY: setpriority takes its arguments by value; who 0 with
            // PRIO_PROCESS is the calling thread on Linux.
            check(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) })?;
        }
    }
    Ok(())
}
