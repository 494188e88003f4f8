//! No safe call crashes the process, and the defects of issue 9 stay fixed. What could
//! kill the process (SIGSEGV, SIGBUS, a panic) runs in a child: the test binary runs
//! itself for one test with HOSTMEM_CHILD set, and the parent asserts the child exited
//! normally and printed the error it was given.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use common::*;
use hostmem::{Backend, Kind};

/// In the child: None. In the parent: runs this test in a child and returns its
/// stdout after asserting it ran that very test and exited with status 0 (not by a
/// signal, not by a panic): `common::child_run`.
fn in_child(test: &str) -> Option<String> {
    child_run(test).map(|run| run.assert_survived().stdout.clone())
}

#[test]
fn writing_to_a_readonly_file_backend_is_an_error_not_sigsegv() {
    if let Some(out) = in_child("writing_to_a_readonly_file_backend_is_an_error_not_sigsegv") {
        assert!(
            out.contains("CHILD: write refused: the memory is mapped read-only"),
            "{out}"
        );
        return;
    }
    let dir = TempDir::new("sound");
    let path = dir.path().join("ro");
    std::fs::write(&path, vec![7u8; 4 * MIB as usize]).unwrap();
    let b = Backend::builder(Kind::File, "ro")
        .size(4 * MIB)
        .mem_path(&path)
        .readonly(true)
        .create()
        .unwrap();
    let hold = b.hold().unwrap();
    assert!(!hold.is_writable());
    let e = hold.write_at(0, b"x").unwrap_err();
    println!("CHILD: write refused: {e}");
    assert!(hold.fill(0, 4096, 1).is_err());
    let mut buf = [0u8; 4];
    hold.read_at(4096, &mut buf).unwrap();
    assert_eq!(buf, [7; 4], "reading still works");
}

#[test]
fn a_file_offset_whose_end_overflows_is_refused_without_panic() {
    let dir = TempDir::new("sound");
    let e = Backend::builder(Kind::File, "f")
        .size(8192)
        .offset(u64::MAX - 4095)
        .mem_path(dir.path().join("f"))
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("'offset'"), "{e}");
    assert!(!dir.path().join("f").exists(), "nothing created");
}

/// smaps Rss of the mapping starting at `start`, read from the kernel.
fn rss_of(start: usize) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let prefix = format!("{start:x}-");
    let mut inside = false;
    for line in text.lines() {
        if line.contains('-')
            && line
                .split_whitespace()
                .next()
                .is_some_and(|w| !w.ends_with(':'))
            && line.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
        {
            inside = line.starts_with(&prefix);
        } else if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    * 1024;
            }
        }
    }
    panic!("no smaps entry at {start:#x}");
}

#[test]
fn a_ram_size_of_4097_is_rounded_up_preallocated_whole_and_unmapped_whole() {
    // In a child of its own: another test's thread could map the freed range again.
    if in_child("a_ram_size_of_4097_is_rounded_up_preallocated_whole_and_unmapped_whole").is_some()
    {
        return;
    }
    let mut b = Backend::builder(Kind::Ram, "r")
        .size(4097)
        .prealloc(true)
        .create()
        .unwrap();
    let start = b.host_addr().unwrap();
    assert_eq!(b.mapped_len(), Some(8192));
    // Both pages faulted in, as QEMU 10 does for a rounded-up ram backend.
    assert_eq!(rss_of(start), 8192);
    assert_eq!(
        b.get("size").unwrap().to_string(),
        "4097",
        "size reads as set"
    );
    b.delete().unwrap();
    assert!(!mapped(start, 8192), "no remnant left in /proc/self/maps");
}

#[test]
fn memfd_shm_and_file_sizes_that_are_not_whole_pages_get_qemus_message() {
    for kind in [Kind::Memfd, Kind::Shm] {
        let e = Backend::builder(kind, "m").size(4097).create().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "backend '{}' memory size must be multiple of 4 KiB",
                kind.qom_type()
            )
        );
    }
    let dir = TempDir::new("sound");
    let e = Backend::builder(Kind::File, "f")
        .size(4097)
        .mem_path(dir.path())
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "backend 'memory-backend-file' memory size must be multiple of 4 KiB"
    );
}

#[test]
fn a_non_utf8_directory_gets_the_temp_file_in_that_very_directory() {
    let base = TempDir::new("sound");
    let dir = base.path().join(OsStr::from_bytes(b"guest-\xff\xfe"));
    std::fs::create_dir(&dir).unwrap();
    let b = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .share(true)
        .mem_path(&dir)
        .create()
        .unwrap();
    let start = b.host_addr().unwrap();
    let maps = std::fs::read("/proc/self/maps").unwrap();
    let prefix = format!("{start:x}-");
    let line = maps
        .split(|&c| c == b'\n')
        .find(|l| l.starts_with(prefix.as_bytes()))
        .expect("the mapping is in /proc/self/maps");
    let want = dir.as_os_str().as_bytes();
    assert!(
        line.windows(want.len()).any(|w| w == want),
        "mapped file is inside the non-UTF-8 directory: {}",
        String::from_utf8_lossy(line)
    );
    // A named file at a non-UTF-8 path is created at exactly that path.
    let named: PathBuf = dir.join(OsStr::from_bytes(b"ram-\xff"));
    let f = Backend::builder(Kind::File, "n")
        .size(4 * MIB)
        .mem_path(&named)
        .create()
        .unwrap();
    assert!(named.exists());
    assert_eq!(f.get("mem-path").unwrap(), hostmem::PropValue::Path(named));
}

#[test]
fn shm_is_shared_unlinked_and_refuses_share_off_with_qemus_message() {
    let e = Backend::builder(Kind::Shm, "s")
        .size(4 * MIB)
        .share(false)
        .create()
        .unwrap_err();
    assert_eq!(e.to_string(), "can't create shm backend with `share=off`");
    let b = Backend::builder(Kind::Shm, "s")
        .size(4 * MIB)
        .prealloc(true)
        .create()
        .unwrap();
    let start = b.host_addr().unwrap();
    let line = maps_line(start).unwrap();
    assert!(
        line.contains("/dev/shm/hostmem-") && line.ends_with("(deleted)"),
        "{line}"
    );
    let v = b.inspect().unwrap();
    assert!(v.has_flag("sh"), "MAP_SHARED: {:?}", v.vmflags);
    assert_eq!(v.resident, 4 * MIB);
}

#[test]
fn shm_reserve_off_maps_noreserve() {
    let b = Backend::builder(Kind::Shm, "s")
        .size(4 * MIB)
        .reserve(false)
        .create()
        .unwrap();
    assert!(b.inspect().unwrap().has_flag("nr"), "VM_NORESERVE");
}

#[test]
fn each_property_name_is_spelled_in_one_place_of_the_library() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from(src)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                // A module's unit tests in a file of their own (`tests.rs`).
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                files.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut names: Vec<&str> = Kind::ALL
        .iter()
        .flat_map(|&k| hostmem::kind::properties(k))
        .map(|p| p.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 19, "{names:?}");
    for name in names {
        let quoted = format!("\"{name}\"");
        let places: Vec<String> = files
            .iter()
            .flat_map(|(p, text)| {
                text.lines()
                    .enumerate()
                    // Tests quote names to check behaviour; the declaration is code.
                    .take_while(|(_, l)| !l.starts_with("#[cfg(test)]"))
                    // A line that says it is "not a property" uses the same word for
                    // something else (the hugetlb cgroup controller).
                    .filter(|(_, l)| {
                        !l.trim_start().starts_with("//")
                            && !l.contains("// not a property")
                            && l.contains(&quoted)
                    })
                    .map(move |(i, _)| format!("{}:{}", p.display(), i + 1))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(places.len(), 1, "{name} is spelled in {places:?}");
    }
}
