//! A lazy restore from a bad image: one flipped byte, a truncated file, a block device
//! that loses its end in the middle of the restore (this kernel has no device-mapper
//! for a dm "error" target, nor fault injection: the closest real failure of a device
//! mid-restore is a loop device shrunk under the reader). The error
//! arrives within 1 s naming the block, the toucher is answered (an error through
//! MADV_POPULATE, SIGBUS for a plain load — in a child process), never with the bad
//! bytes, and no thread hangs: every wait has a deadline that fails the test.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::lazy::{within, DEADLINE};
use crate::*;
use hostmem::snapshot::{self, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const SIZE: u64 = 32 * MIB;
const ONE_SECOND: Duration = Duration::from_secs(1);

fn memfd(id: &str) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(SIZE)
        .create()
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip,
    Truncate,
}

/// An image of a scattered memfd with block 4 (random data) damaged, and what was
/// written.
fn damaged(dir: &TempDir, how: Damage) -> (std::path::PathBuf, Expected) {
    let path = dir.path().join("mem.img");
    let src = memfd("src");
    let want = scatter(&src.hold().unwrap(), 21);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let b4 = (4 * BLOCK) as usize;
    let at = find_in_file(&path, &want.bytes[b4..b4 + 64]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    match how {
        Damage::Flip => {
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, at + BLOCK / 2).unwrap();
            f.write_all_at(&[byte[0] ^ 0x10], at + BLOCK / 2).unwrap();
        }
        Damage::Truncate => f.set_len(at + BLOCK / 2).unwrap(),
    }
    (path, want)
}

/// Block 3 is served right; touching block 4 fails within the deadline; the error,
/// naming block 4, is in progress() within 1 s of the touch; the memory never holds
/// block 4's bytes (the kernel has no page there: /proc/self/mem cannot read it).
fn bad_block_is_reported_and_never_served(tag: &str, image: Arc<Image>, want: &Expected) {
    let dst = memfd("dst");
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy(image, &dst, opts).unwrap();
    let hold = dst.hold().unwrap();
    let b3 = (3 * BLOCK) as usize;
    let h = hold.clone();
    let got = within(DEADLINE, tag, move || {
        let mut buf = vec![0u8; 4096];
        h.read_at(b3, &mut buf).unwrap();
        buf
    });
    assert_eq!(got, want.bytes[b3..b3 + 4096], "{tag}: block 3");

    let touched = Instant::now();
    let h = hold.clone();
    // The damaged page itself (a flipped byte or the cut is BLOCK/2 into block 4): the
    // image's 4 KiB chunk sums let a touch elsewhere in the block be served rightly.
    let b4 = (4 * BLOCK + BLOCK / 2) as usize;
    let touch = within(DEADLINE, tag, move || {
        let mut buf = vec![0u8; 4096];
        h.read_at(b4, &mut buf).map(|_| buf)
    });
    assert!(
        touch.is_err(),
        "{tag}: a touch of the bad block read bytes: {:?}",
        &touch.unwrap()[..8]
    );
    assert!(
        server.wait_timeout(ONE_SECOND),
        "{tag}: no error within 1 s of the touch"
    );
    let p = server.progress();
    assert!(
        touched.elapsed() <= ONE_SECOND + Duration::from_millis(200),
        "{tag}: error after {:?}",
        touched.elapsed()
    );
    assert!(
        p.errors.len() == 1 && p.errors[0].contains("block 4 "),
        "{tag}: errors {:?}",
        p.errors
    );
    // The toucher wakes as the poison lands, the counter follows it.
    let deadline = Instant::now() + ONE_SECOND;
    while server.progress().poisoned_bytes == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        server.progress().poisoned_bytes > 0,
        "{tag}: nothing poisoned: {p:?}"
    );
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut page = vec![0u8; 4096];
    let at = dst.host_addr().unwrap() as u64 + b4 as u64;
    assert!(
        mem.read_exact_at(&mut page, at).is_err(),
        "{tag}: the kernel has a page where the bad block is"
    );
    let e = server.stop().unwrap_err();
    assert_eq!(e.block(), Some(4), "{tag}: {e}");
}

#[test]
fn lazy_restore_of_a_flipped_byte_reports_block_4_within_1s_and_never_serves_it() {
    let dir = TempDir::new("lazy-flip");
    let (path, want) = damaged(&dir, Damage::Flip);
    let image = Arc::new(Image::open(&path).unwrap());
    bad_block_is_reported_and_never_served("flip", image, &want);
}

#[test]
fn lazy_restore_of_a_truncated_image_reports_block_4_within_1s_and_never_serves_it() {
    let dir = TempDir::new("lazy-trunc");
    let (path, want) = damaged(&dir, Damage::Truncate);
    let image = Arc::new(Image::open(&path).unwrap());
    bad_block_is_reported_and_never_served("truncate", image, &want);
}

#[test]
fn lazy_background_fill_reports_a_flipped_block_within_1s_and_wait_names_it() {
    let dir = TempDir::new("lazy-flip-fill");
    let (path, _) = damaged(&dir, Damage::Flip);
    let image = Arc::new(Image::open(&path).unwrap());
    let dst = memfd("dst");
    let started = Instant::now();
    let server = snapshot::restore_lazy(image, &dst, LazyOptions::default()).unwrap();
    assert!(
        server.wait_timeout(ONE_SECOND),
        "the fill met block 4 but no error within 1 s"
    );
    let took = started.elapsed();
    let e = within(DEADLINE, "wait", move || server.wait()).unwrap_err();
    assert_eq!(e.block(), Some(4), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert!(took <= ONE_SECOND + Duration::from_millis(200), "{took:?}");
}

/// The child's half of the SIGBUS test: a plain load (vm-memory's copy, as a VMM's
/// device model makes it) from the bad block after a good one.
#[cfg(feature = "vm-memory")]
#[test]
fn lazy_touch_of_a_bad_block_raises_sigbus_in_the_toucher() {
    let test = "lazy_faults::lazy_touch_of_a_bad_block_raises_sigbus_in_the_toucher";
    if let Some(run) = child_run(test) {
        run.assert_printed("CHILD read block 3")
            .assert_printed("CHILD touching block 4");
        assert_eq!(
            run.signal,
            Some(libc_sigbus()),
            "the toucher was not killed by SIGBUS: exit {:?}\n{}\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
        assert!(!run.stdout.contains("CHILD read block 4"), "{}", run.stdout);
        return;
    }
    use hostmem::vm_memory::{Bytes, GuestAddress};
    use hostmem::vmm::{guest_memory, RegionSpec};
    use std::io::Write;
    let dir = TempDir::new("lazy-sigbus");
    let (path, want) = damaged(&dir, Damage::Flip);
    let image = Arc::new(Image::open(&path).unwrap());
    let dst = memfd("dst");
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let _server = snapshot::restore_lazy(image, &dst, opts).unwrap();
    let mem = guest_memory::<()>(&[RegionSpec::whole(&dst, GuestAddress(0))]).unwrap();
    let mut buf = vec![0u8; 4096];
    mem.read_slice(&mut buf, GuestAddress(3 * BLOCK)).unwrap();
    let b3 = (3 * BLOCK) as usize;
    assert_eq!(buf, want.bytes[b3..b3 + 4096]);
    println!("CHILD read block 3");
    println!("CHILD touching block 4");
    std::io::stdout().flush().unwrap();
    mem.read_slice(&mut buf, GuestAddress(4 * BLOCK + BLOCK / 2))
        .unwrap();
    println!("CHILD read block 4");
}

#[cfg(feature = "vm-memory")]
fn libc_sigbus() -> i32 {
    7
}

/// A loop device over a file; detached on drop.
struct LoopDevice {
    dev: String,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopDevice {
    fn new(backing: &std::path::Path) -> Result<LoopDevice, String> {
        let dev = run("losetup", &["--find", "--show", backing.to_str().unwrap()])?;
        Ok(LoopDevice { dev })
    }

    /// The device loses everything from byte `from` on: the backing file is cut there,
    /// the loop device told its new capacity, its page cache dropped, so reads past it
    /// reach the device and find its end.
    fn cut_at(&self, backing: &std::path::Path, from: u64) -> Result<(), String> {
        let f = std::fs::File::options().write(true).open(backing).unwrap();
        f.set_len(from).map_err(|e| e.to_string())?;
        run("losetup", &["--set-capacity", &self.dev])?;
        run("blockdev", &["--flushbufs", &self.dev]).map(|_| ())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run("losetup", &["-d", &self.dev]);
    }
}

#[test]
fn lazy_restore_from_a_device_that_loses_its_end_midway_reports_it_within_1s() {
    let dir = TempDir::new("lazy-eio");
    let src = dir.path().join("mem.img");
    let want = {
        let b = memfd("src");
        let want = scatter(&b.hold().unwrap(), 31);
        snapshot::save(&b, &src, &SaveOptions::default(), &Progress::new()).unwrap();
        want
    };
    // The image's bytes on a loop device (a plain file copy: holes become zeros on
    // the device, which the block table still calls holes).
    let backing = dir.path().join("disk");
    std::fs::copy(&src, &backing).unwrap();
    let len = std::fs::metadata(&backing).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(len.div_ceil(512) * 512)
        .unwrap();
    let dev = LoopDevice::new(&backing).expect("a loop device");
    let image = Arc::new(Image::open(&dev.dev).unwrap());
    let b4 = image.header().block(4).unwrap();
    let dst = memfd("dst");
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
    let hold = dst.hold().unwrap();
    let h = hold.clone();
    let b3 = (3 * BLOCK) as usize;
    let got = within(DEADLINE, "eio block 3", move || {
        let mut buf = vec![0u8; 4096];
        h.read_at(b3, &mut buf).unwrap();
        buf
    });
    assert_eq!(got, want.bytes[b3..b3 + 4096], "block 3 before the failure");

    // Midway: the device ends inside block 4 from now on.
    dev.cut_at(&backing, b4.file_offset + b4.len / 2).unwrap();
    let touched = Instant::now();
    let h = hold.clone();
    let touch = within(DEADLINE, "eio block 4", move || {
        let mut buf = vec![0u8; 4096];
        h.read_at((4 * BLOCK) as usize, &mut buf).map(|_| buf)
    });
    assert!(touch.is_err(), "a touch of the unreadable block read bytes");
    assert!(server.wait_timeout(ONE_SECOND), "no error within 1 s");
    assert!(touched.elapsed() <= ONE_SECOND + Duration::from_millis(200));
    let p = server.progress();
    assert!(
        p.errors.len() == 1
            && p.errors[0].contains("block 4 ")
            && p.errors[0].contains("short read"),
        "{:?}",
        p.errors
    );
    drop(hold);
    let e = server.stop().unwrap_err();
    assert_eq!(e.block(), Some(4), "{e}");
    drop(image);
}
