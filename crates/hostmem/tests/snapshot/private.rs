//! Private-mapping restore (QEMU templating): clones of one image read the saved bytes
//! (through /proc/self/mem), a write stays in the clone that made it (another clone and
//! the file still hold the saved bytes), the clones' untouched pages are the image's
//! page cache shared between them (smaps: Shared_Clean, no Private_Dirty, no
//! Anonymous), and a corrupted image is refused before anything is mapped.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::common::*;
use crate::*;
use hostmem::snapshot::{self, Dirty, Image, PrivateOptions, SaveOptions, SnapshotError};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;

/// A saved image of a scattered memfd, and what was written.
fn saved(dir: &TempDir, seed: u64) -> (std::path::PathBuf, Backend, Expected) {
    let path = dir.path().join("mem.img");
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let want = scatter(&src.hold().unwrap(), seed);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    (path, src, want)
}

/// The kB figure of `field` (e.g. `Shared_Clean`) in smaps for the mapping at `start`,
/// in bytes.
fn smaps_field(start: usize, field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{start:x}-");
    let key = format!("{field}:");
    text.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.contains('-') || l.ends_with("kB") || l.starts_with("VmFlags"))
        .find(|l| l.starts_with(&key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} for the mapping at {start:#x}"))
}

#[test]
fn private_clones_read_the_saved_bytes() {
    let dir = TempDir::new("private-bytes");
    let (path, _src, want) = saved(&dir, 21);
    let image = Image::open(&path).unwrap();
    let a = snapshot::restore_private(&image, "a", &PrivateOptions::default()).unwrap();
    let b = snapshot::restore_private(&image, "b", &PrivateOptions::default()).unwrap();
    assert_eq!(a.kind(), Kind::File);
    assert_same_bytes(&read_memory(&a), &want.bytes, "clone a");
    assert_same_bytes(&read_memory(&b), &want.bytes, "clone b");
    let line = maps_line(a.host_addr().unwrap()).expect("the clone is mapped");
    assert!(
        line.contains("p ") && line.contains("mem.img"),
        "a private mapping of the image: {line}"
    );
}

#[test]
fn a_write_in_one_private_clone_is_seen_neither_by_another_nor_in_the_file() {
    let dir = TempDir::new("private-cow");
    let (path, _src, want) = saved(&dir, 22);
    let image = Image::open(&path).unwrap();
    let a = snapshot::restore_private(&image, "a", &PrivateOptions::default()).unwrap();
    let b = snapshot::restore_private(&image, "b", &PrivateOptions::default()).unwrap();
    // Block 3 is random data: overwrite its first page in clone a.
    let at = (3 * BLOCK) as usize;
    let saved_page = want.bytes[at..at + 4096].to_vec();
    let in_file = find_in_file(&path, &saved_page);
    a.hold()
        .unwrap()
        .write_at(at, &random_bytes(999, 4096))
        .unwrap();
    let mut a_bytes = want.bytes.clone();
    a_bytes[at..at + 4096].copy_from_slice(&random_bytes(999, 4096));
    assert_same_bytes(&read_memory(&a), &a_bytes, "clone a after its write");
    assert_same_bytes(&read_memory(&b), &want.bytes, "clone b after a's write");
    let mut file_page = vec![0u8; 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut file_page, in_file)
        .unwrap();
    assert_eq!(
        file_page, saved_page,
        "the image file changed under a clone's write"
    );
    let copied = smaps_field(a.host_addr().unwrap(), "Anonymous");
    assert_eq!(
        copied, 4096,
        "the write copied exactly one page into clone a"
    );
    assert_eq!(smaps_field(b.host_addr().unwrap(), "Anonymous"), 0);
}

#[test]
fn private_clones_share_the_image_page_cache() {
    let dir = TempDir::new("private-share");
    let (path, _src, want) = saved(&dir, 23);
    let image = Image::open(&path).unwrap();
    let a = snapshot::restore_private(&image, "a", &PrivateOptions::default()).unwrap();
    let b = snapshot::restore_private(&image, "b", &PrivateOptions::default()).unwrap();
    // Touch every data block in both clones (reads only).
    for c in [&a, &b] {
        assert_same_bytes(&read_memory(c), &want.bytes, c.id());
    }
    let data = want.data_blocks.len() as u64 * BLOCK;
    for c in [&a, &b] {
        let start = c.host_addr().unwrap();
        let rss = smaps_field(start, "Rss");
        let shared = smaps_field(start, "Shared_Clean");
        assert!(
            shared >= data - BLOCK,
            "{}: {shared} bytes Shared_Clean of {rss} resident; the image's data blocks are {data}",
            c.id()
        );
        assert_eq!(smaps_field(start, "Private_Dirty"), 0, "{}", c.id());
        assert_eq!(smaps_field(start, "Anonymous"), 0, "{}", c.id());
    }
}

#[test]
fn a_corrupted_image_is_refused_by_private_restore_naming_the_block() {
    let dir = TempDir::new("private-flip");
    let (path, _src, want) = saved(&dir, 24);
    let at = (4 * BLOCK) as usize;
    let in_file = find_in_file(&path, &want.bytes[at..at + 4096]);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let mut byte = [0u8];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut byte, in_file + 100)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], in_file + 100).unwrap();
    let image = Image::open(&path).unwrap();
    match snapshot::restore_private(&image, "bad", &PrivateOptions::default()) {
        Err(e) => assert_eq!(e.block(), Some(4), "{e}"),
        Ok(b) => panic!("a flipped byte was mapped at {:#x}", b.host_addr().unwrap()),
    }
    let name = path.to_str().unwrap();
    assert!(
        !vmas().iter().any(|v| v.path.starts_with(name)),
        "a mapping of the image was left behind"
    );
}

#[test]
fn a_diff_image_is_refused_by_private_restore() {
    let dir = TempDir::new("private-diff");
    let (path, src, _) = saved(&dir, 25);
    let base = Image::open(&path).unwrap();
    let diff_path = dir.path().join("diff.img");
    let all = vec![u64::MAX; (SIZE / 4096 / 64) as usize];
    let dirty = Dirty {
        page_size: 4096,
        bits: &all,
    };
    snapshot::save_diff(&src, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    let diff = Image::open(&diff_path).unwrap();
    match snapshot::restore_private(&diff, "d", &PrivateOptions::default()) {
        Err(SnapshotError::Mismatch(m)) => assert!(m.contains("diff"), "{m}"),
        other => panic!("a diff image mapped privately: {other:?}"),
    }
}

/// Bytes of `path` in the page cache, as the kernel reports them (fincore(1): mincore
/// over a mapping of the file).
fn cached_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {text:?}"))
}

/// Drops `path`'s pages from the page cache (written back first).
fn evict(path: &std::path::Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(
        cached_bytes(path),
        0,
        "the image is still in the page cache"
    );
}

#[test]
fn a_later_private_restore_of_an_unchanged_verified_image_does_not_read_it() {
    let dir = TempDir::new("private-once");
    let (path, _src, want) = saved(&dir, 26);
    let image = Image::open(&path).unwrap();
    let once = PrivateOptions::default();
    drop(snapshot::restore_private(&image, "first", &once).unwrap());
    // The first restore read every data block: with it evicted, a restore that checks
    // again brings them all back (so the measure below can see a read)...
    evict(&path);
    let always = PrivateOptions {
        verify: snapshot::Verify::Always,
    };
    drop(snapshot::restore_private(&image, "always", &always).unwrap());
    let data = want.data_blocks.len() as u64 * BLOCK;
    assert!(
        cached_bytes(&path) >= data,
        "Verify::Always read {} of the {data} data bytes",
        cached_bytes(&path)
    );
    // ...while a later clone of the unchanged file maps it without reading a page.
    evict(&path);
    let later = snapshot::restore_private(&image, "later", &once).unwrap();
    assert_eq!(cached_bytes(&path), 0, "the later clone read the image");
    assert_same_bytes(&read_memory(&later), &want.bytes, "the later clone");
}

#[test]
fn a_write_to_a_verified_image_makes_the_next_private_restore_check_it_again() {
    let dir = TempDir::new("private-rewritten");
    let (path, _src, want) = saved(&dir, 27);
    let once = PrivateOptions::default();
    drop(snapshot::restore_private(&Image::open(&path).unwrap(), "first", &once).unwrap());
    // Flip a byte of block 4 and set the mtime back as it was: only the ctime (which
    // no caller can set) still says the file changed.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let at = (4 * BLOCK) as usize;
    let in_file = find_in_file(&path, &want.bytes[at..at + 4096]) + 100;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, in_file).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], in_file).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    let image = Image::open(&path).unwrap();
    match snapshot::restore_private(&image, "again", &once) {
        Err(e) => assert_eq!(e.block(), Some(4), "{e}"),
        Ok(b) => panic!(
            "a flipped byte after the stamp was mapped at {:#x}",
            b.host_addr().unwrap()
        ),
    }
    // Verify::Never is the caller's word: it maps what the file holds now.
    let never = PrivateOptions {
        verify: snapshot::Verify::Never,
    };
    let b = snapshot::restore_private(&image, "never", &never).unwrap();
    let got = read_memory(&b);
    assert_ne!(&got[at..at + 4096], &want.bytes[at..at + 4096]);
}
