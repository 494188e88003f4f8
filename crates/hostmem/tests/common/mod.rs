//! Helpers for tests that check backends against what the kernel reports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use hostmem::numa::HugePool;
use hostmem_testkit as testkit;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Whether [start, start+len) overlaps any mapping in /proc/self/maps.
pub fn mapped(start: usize, len: usize) -> bool {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    text.lines().any(|l| {
        let r = l.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        let a = usize::from_str_radix(a, 16).unwrap();
        let b = usize::from_str_radix(b, 16).unwrap();
        a < start + len && b > start
    })
}

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vma {
    pub start: usize,
    pub end: usize,
    /// `rw-p`, `rw-s`, ...
    pub perms: String,
    /// The file (with ` (deleted)` when unlinked), `[heap]`, or empty for anonymous.
    pub path: String,
}

impl Vma {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Every mapping of this process, as /proc/self/maps lists them.
pub fn vmas() -> Vec<Vma> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    text.lines()
        .map(|l| {
            let mut f = l.splitn(6, ' ');
            let (range, perms) = (f.next().unwrap(), f.next().unwrap());
            let (a, b) = range.split_once('-').unwrap();
            Vma {
                start: usize::from_str_radix(a, 16).unwrap(),
                end: usize::from_str_radix(b, 16).unwrap(),
                perms: perms.to_string(),
                path: f.nth(3).unwrap_or("").trim().to_string(),
            }
        })
        .collect()
}

/// The /proc/self/numa_maps line of the mapping at `start`.
pub fn numa_maps_line(start: usize) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/numa_maps").unwrap();
    let prefix = format!("{start:x} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_string)
}

/// Resident bytes (smaps `Rss`) of the mappings that start in [start, start+len).
pub fn smaps_rss(start: usize, len: usize) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut total = 0;
    for l in text.lines() {
        let head = l.split_whitespace().next().unwrap_or("");
        if let Some((a, _)) = head.split_once('-').filter(|_| !head.ends_with(':')) {
            let a = usize::from_str_radix(a, 16).unwrap_or(usize::MAX);
            inside = a >= start && a < start + len;
        } else if inside && head == "Rss:" {
            total += l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024;
        }
    }
    total
}

/// Resident bytes of the whole process (`VmRSS` of /proc/self/status, shmem included).
pub fn process_rss() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// What a test run alone in a child process did.
#[derive(Debug)]
pub struct ChildRun {
    pub test: String,
    pub stdout: String,
    pub stderr: String,
    /// Exit code; None when a signal ended the child.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ChildRun {
    /// Asserts the child passed its one test and ended by itself: exit 0, no signal
    /// (SIGBUS, SIGSEGV, SIGABRT), libtest's `1 passed`.
    pub fn assert_survived(&self) -> &ChildRun {
        assert!(
            self.code == Some(0) && self.signal.is_none() && self.stdout.contains("1 passed"),
            "child for {} did not pass: exit {:?}, signal {:?}\n{}\n{}",
            self.test,
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts the child printed `line` (a `CHILD ...` marker of what it did) as a
    /// line of its own, or after libtest's `test NAME ... ` (--nocapture).
    pub fn assert_printed(&self, line: &str) -> &ChildRun {
        let after_name = format!("test {} ... {line}", self.test);
        assert!(
            self.stdout.lines().any(|l| l == line || l == after_name),
            "child for {} did not print {line:?}:\n{}",
            self.test,
            self.stdout
        );
        self
    }
}

/// In the child (HOSTMEM_CHILD set): None, go on with the test. In the parent: runs
/// the test `test` (its full path in the binary, `module::name`) alone in a child
/// process and returns what it did, after asserting the child really ran that one
/// test (libtest printed `running 1 test` and the test's own line), so a renamed test
/// cannot pass without running. What could kill the process (SIGBUS, SIGSEGV, an
/// abort) then fails the parent's test instead of the whole run.
pub fn child_run(test: &str) -> Option<ChildRun> {
    if std::env::var_os("HOSTMEM_CHILD").is_some() {
        return None;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("HOSTMEM_CHILD", "1")
        .output()
        .unwrap();
    let run = ChildRun {
        test: test.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
    };
    assert!(
        run.stdout.contains("running 1 test") && run.stdout.contains(&format!("test {test} ")),
        "the child did not run the test {test} (renamed?):\n{}\n{}",
        run.stdout,
        run.stderr
    );
    Some(run)
}

/// Runs the named test in a child process of its own (the test binary with
/// HOSTMEM_CHILD set), where no other test maps or unmaps memory meanwhile, so
/// /proc/self/maps and Rss change only by what the test does. In the child: false (go
/// on with the test). In the parent: true after asserting the child passed.
pub fn ran_in_child(test: &str) -> bool {
    match child_run(test) {
        None => false,
        Some(run) => {
            run.assert_survived();
            true
        }
    }
}

/// The /proc/self/maps line of the mapping at `start`.
pub fn maps_line(start: usize) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    let prefix = format!("{start:x}-");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_string)
}

/// Tests that count a file system's free blocks run one at a time: a child process
/// another test spawns holds copies of every fd between its fork and exec, and with
/// them the blocks of a just-deleted temp file.
static SPAWNS: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SPAWNS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the pool of `page_size` pages for a test and puts it back as it was on drop
/// (hostmem-testkit's guard, which also keeps pool-changing tests one at a time).
pub struct PoolGuard {
    page_size: u64,
    _kit: testkit::pool::PoolGuard,
}

impl PoolGuard {
    /// As [`PoolGuard::set`], but a kernel that makes fewer pages than asked (no
    /// contiguous memory for them, even after compaction) is an `Err` holding the pool
    /// as the kernel left it (put back on drop), not a panic.
    pub fn try_set(page_size: u64, pages: u64) -> Result<PoolGuard, PoolGuard> {
        let mut kit = testkit::pool::PoolGuard::new();
        let got = kit
            .set(testkit::pool::Pool::host(page_size), pages)
            .unwrap_or_else(|e| panic!("setting the {page_size}-byte pool: {e}"));
        let guard = PoolGuard {
            page_size,
            _kit: kit,
        };
        if got == pages {
            Ok(guard)
        } else {
            Err(guard)
        }
    }

    pub fn set(page_size: u64, pages: u64) -> PoolGuard {
        PoolGuard::try_set(page_size, pages).unwrap_or_else(|short| {
            let got = short.pool().total;
            drop(short);
            panic!("the kernel made {got} of the {pages} huge pages the test asked for")
        })
    }

    pub fn pool(&self) -> HugePool {
        HugePool::read(self.page_size, None).unwrap()
    }
}

/// A fresh directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("hostmem-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn entries(&self) -> usize {
        std::fs::read_dir(&self.0).unwrap().count()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hugetlbfs of `page_size` pages mounted on a temp dir (needs root).
pub fn mount_hugetlbfs(page_size: u64) -> TempDir {
    let d = TempDir::new("hugetlbfs");
    let st = Command::new("mount")
        .args([
            "-t",
            "hugetlbfs",
            "-o",
            &format!("pagesize={}K", page_size / 1024),
            "none",
        ])
        .arg(d.path())
        .status()
        .expect("running mount");
    assert!(st.success(), "mounting hugetlbfs needs root");
    d
}

/// A tmpfs of `size` mounted on a fresh temp dir (root), unmounted on drop.
pub fn mount_tmpfs(size: &str) -> TempDir {
    let d = TempDir::new("tmpfs");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "none"])
        .arg(d.path())
        .status()
        .expect("running mount");
    assert!(st.success(), "mounting tmpfs needs root");
    d
}

/// Bytes an unprivileged writer could still put on the file system at `d`.
pub fn fs_avail(d: &TempDir) -> u64 {
    let s = rustix::fs::statvfs(d.path()).expect("statvfs");
    s.f_bavail * s.f_frsize
}

/// A RAM backend of `size` to be configured further.
pub fn ram(id: &str, size: u64) -> hostmem::Builder {
    hostmem::Backend::builder(hostmem::Kind::Ram, id).size(size)
}
