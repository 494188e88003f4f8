//! A client that does what Firecracker does on a snapshot load with a Uffd backend:
//! guest memory mapped anonymous private (or hugetlb, 2 MiB), a userfaultfd with
//! UFFD_FEATURE_EVENT_REMOVE and the memory registered MISSING, the region list as JSON
//! and the uffd in one `sendmsg`, the socket kept open. Then it touches every page and
//! compares each byte with the memory file the test wrote, read back by the test.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use hostmem::plug::Blocks;
use hostmem::snapshot::firecracker::{userfaultfd_for, userfaultfd_minor_for};
use hostmem::{Backend, InUse, Kind};
use hostmem_testkit::pool::{Pool, PoolGuard};
use serde_json::json;

use super::*;

const MIB: u64 = 1 << 20;

/// Bytes that do not repeat (an LCG's high bytes).
fn noise(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// Firecracker's memory file for `len` bytes: noise, except a 2 MiB hole (never
/// written, a file hole) and one all-zero page written out. Returns what the test wrote.
fn memory_file(path: &Path, len: u64) -> Vec<u8> {
    let mut bytes = noise(len, len);
    let hole = len / 2..len / 2 + 2 * MIB;
    bytes[hole.start as usize..hole.end as usize].fill(0);
    bytes[4096..8192].fill(0);
    let f = File::create(path).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(&bytes[..hole.start as usize], 0).unwrap();
    f.write_all_at(&bytes[hole.end as usize..], hole.end)
        .unwrap();
    drop(f);
    std::fs::read(path).unwrap()
}

/// Firecracker's region list for guest memory at `addr`: split at `split` (as its
/// regions are split around the PCI hole), offsets back to back in the file.
fn regions(addr: u64, len: u64, split: u64, page: u64) -> String {
    let r = |base: u64, size: u64, offset: u64| {
        json!({"base_host_virt_addr": base, "size": size, "offset": offset,
               "page_size": page, "page_size_kib": page})
    };
    json!([r(addr, split, 0), r(addr + split, len - split, split)]).to_string()
}

/// Reads `[off, off + len)` of the guest memory on another thread (a touch that is
/// never served must fail the test, not hang it).
fn touch(mem: &InUse, off: u64, len: u64) -> Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = channel();
    let mem = mem.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; len as usize];
        let r = mem.read_at(off as usize, &mut buf).map(|_| buf);
        let _ = tx.send(r);
    });
    rx
}

fn touched(rx: &Receiver<std::io::Result<Vec<u8>>>, what: &str) -> Vec<u8> {
    match rx.recv_timeout(STEP) {
        Ok(r) => r.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: the touch was not served within {STEP:?}"),
    }
}

/// The first page (of `page` bytes) where `got` differs from `want`.
fn same_bytes(got: &[u8], want: &[u8], page: usize) -> Result<(), String> {
    assert_eq!(got.len(), want.len());
    match got
        .chunks(page)
        .zip(want.chunks(page))
        .position(|(a, b)| a != b)
    {
        None => Ok(()),
        Some(p) => Err(format!("page {p} differs from the memory file")),
    }
}

/// A field of the mapping at `addr` in /proc/self/smaps, in bytes.
fn smaps_field(addr: usize, field: &str) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{addr:x}-");
    let vma = smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&start))
        .take_while(|l| l.starts_with(&start) || !l.contains('-') || l.contains(':'))
        .collect::<String>();
    let line = vma
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} for {addr:#x} in smaps: {vma}"));
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Firecracker's steps against a running handler; the socket and the uffd, kept.
fn handshake(h: &Handler, mem: &InUse, split: u64) -> (UnixStream, OwnedFd) {
    let uffd = userfaultfd_for(&[mem]).unwrap();
    let s = h.connect();
    let body = regions(
        mem.host_addr() as u64,
        mem.len() as u64,
        split,
        mem.page_size(),
    );
    send(&s, body.as_bytes(), &[uffd.as_fd()]);
    (s, uffd)
}

fn serve_and_compare(tag: &str, guest: Backend, split: u64) {
    let dir = scratch(tag);
    let mem = guest.hold().unwrap();
    let len = mem.len() as u64;
    let file = memory_file(&dir.join("mem"), len);
    let mut h = Handler::start(&dir, &dir.join("mem"), &[]);
    let (s, uffd) = handshake(&h, &mem, split);
    let line = h.line(|l| l.contains("VM 1"));
    assert!(line.contains("handshake: 2 regions"), "{line}");
    h.line(|l| l.contains("VM 1") && l.contains("serving"));
    let got = touched(&touch(&mem, 0, len), "every page");
    same_bytes(&got, &file, mem.page_size() as usize).unwrap();
    // The kernel's view of the guest mapping: pages of the guest's page size, every
    // data page present (a hugetlb hole is a huge page of zeros too: no zero page).
    let (addr, page) = (mem.host_addr(), mem.page_size());
    assert_eq!(smaps_field(addr, "KernelPageSize"), page);
    if page == 4096 {
        assert!(smaps_field(addr, "Rss") >= len - 2 * MIB);
    } else {
        assert_eq!(smaps_field(addr, "Private_Hugetlb"), len);
    }
    h.line(|l| l.contains("VM 1") && l.contains("filled"));
    drop(s); // the VM exits
    let line = h.line(|l| l.contains("VM 1") && l.contains("done"));
    assert!(line.contains("the VM closed the connection"), "{line}");
    assert!(h.alive());
    drop(uffd);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn anonymous_private_guest_memory_reads_the_memory_file_byte_for_byte() {
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(16 * MIB)
        .create()
        .unwrap();
    // A split that is not on a 2 MiB block: no image block may straddle two regions.
    serve_and_compare("anon", guest, 3 * MIB + 12 * 1024);
}

#[test]
fn hugetlb_2m_guest_memory_reads_the_memory_file_byte_for_byte() {
    let pool = Pool::host(2 * MIB);
    let mut guard = PoolGuard::new();
    guard.raise(pool, 8).unwrap();
    let guest = Backend::builder(Kind::Memfd, "fc")
        .size(16 * MIB)
        .hugetlb(true)
        .hugetlbsize(2 * MIB)
        .share(false)
        .create()
        .unwrap();
    serve_and_compare("huge", guest, 6 * MIB);
    guard.restore().unwrap();
}

#[test]
fn pages_the_balloon_removed_fault_again_as_zeros_not_as_the_file() {
    let dir = scratch("balloon");
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(8 * MIB)
        .reserve(false)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    let file = memory_file(&dir.join("mem"), 8 * MIB);
    let mut h = Handler::start(&dir, &dir.join("mem"), &[]);
    let (_s, _uffd) = handshake(&h, &mem, 4 * MIB);
    let got = touched(&touch(&mem, 0, 8 * MIB), "every page");
    same_bytes(&got, &file, 4096).unwrap();
    h.line(|l| l.contains("filled"));
    // What Firecracker's balloon does: MADV_DONTNEED, which waits until the handler
    // has read the REMOVE event, after the fill as well.
    let (tx, rx) = channel();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut blocks = Blocks::new(&guest, 2 * MIB).unwrap();
            let _ = tx.send(blocks.unplug(0..2 * MIB, false).map(|r| r.how));
        });
        let how = rx
            .recv_timeout(STEP)
            .expect("MADV_DONTNEED did not return: REMOVE unread");
        assert_eq!(format!("{:?}", how.unwrap()), "DontNeed");
    });
    let again = touched(&touch(&mem, 0, 2 * MIB), "the removed pages");
    assert!(
        again.iter().all(|&b| b == 0),
        "a removed page was filled from the file"
    );
    let rest = touched(&touch(&mem, 2 * MIB, 6 * MIB), "the other pages");
    same_bytes(&rest, &file[2 * MIB as usize..], 4096).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_region_past_the_memory_file_is_refused_with_a_message() {
    let dir = scratch("short");
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(4 * MIB)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    std::fs::write(dir.join("mem"), noise(2 * MIB + 4096, 1)).unwrap();
    let mut h = Handler::start(&dir, &dir.join("mem"), &[]);
    let (s, _uffd) = handshake(&h, &mem, 2 * MIB);
    let line = h.line(|l| l.contains("VM 1") && l.contains("refused"));
    assert!(
        line.contains("region 1 ([0x200000, 0x400000) of the memory) lies beyond the memory file, which has 2101248 bytes"),
        "{line}"
    );
    closed_by_handler(&s).unwrap();
    assert!(h.alive());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_handler_killed_mid_run_fails_the_touch_in_bounded_time_instead_of_hanging_the_test() {
    let dir = scratch("killed");
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    let file = memory_file(&dir.join("mem"), 8 * MIB);
    let mut h = Handler::start(&dir, &dir.join("mem"), &["--no-fill"]);
    let (s, uffd) = handshake(&h, &mem, 4 * MIB);
    let first = touched(&touch(&mem, 0, 2 * MIB), "the first pages");
    same_bytes(&first, &file[..2 * MIB as usize], 4096).unwrap();
    h.child.kill().unwrap();
    hostmem_testkit::spawn::wait_bounded(&mut h.child, STEP).unwrap();
    // Firecracker's view: the handler's end of the socket is closed.
    closed_by_handler(&s).unwrap();
    // A touch now waits: Firecracker keeps its uffd, so nobody serves and nothing
    // reads zeros in place of the file.
    let rest = touch(&mem, 4 * MIB, 4096);
    assert!(
        rest.recv_timeout(Duration::from_millis(500)).is_err(),
        "a page was served with no handler"
    );
    // The supervisor's way out is to end the VM; here, the last uffd closed ends the
    // wait, so the test ends in bounded time.
    drop(uffd);
    rest.recv_timeout(STEP)
        .expect("the touch still hangs after the uffd was closed")
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hostmem_image_serves_the_handshake_offsets_as_backend_offsets_and_once_exits_0() {
    use hostmem::snapshot::{self, SaveOptions};
    let dir = scratch("image");
    let saved = Backend::builder(Kind::Memfd, "saved")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mut bytes = noise(8 * MIB, 3);
    bytes[(2 * MIB) as usize..(4 * MIB) as usize].fill(0); // a hole in the image
    saved.hold().unwrap().write_at(0, &bytes).unwrap();
    let img = dir.join("mem.img");
    snapshot::save(
        &saved,
        &img,
        &SaveOptions::default(),
        &hostmem::Progress::new(),
    )
    .unwrap();
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    let mut h = Handler::start(&dir, &img, &["--once"]);
    let (s, _uffd) = handshake(&h, &mem, 4 * MIB);
    let line = h.line(|l| l.contains("VM 1") && l.contains("serving"));
    assert!(line.contains("(hostmem image)"), "{line}");
    let got = touched(&touch(&mem, 0, 8 * MIB), "every page");
    same_bytes(&got, &bytes, 4096).unwrap();
    // --once: the VM exits, the handler with status 0.
    drop(s);
    let st = hostmem_testkit::spawn::wait_bounded(&mut h.child, STEP).unwrap();
    assert_eq!(st.code(), Some(0), "{:#?}", h.seen);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hostmem_image_with_its_chunk_sums_serves_a_touch_by_the_page_not_the_block() {
    use hostmem::snapshot::{self, SaveOptions};
    let dir = scratch("chunks");
    let saved = Backend::builder(Kind::Memfd, "saved")
        .size(8 * MIB)
        .create()
        .unwrap();
    let bytes = noise(8 * MIB, 7);
    saved.hold().unwrap().write_at(0, &bytes).unwrap();
    let img = dir.join("mem.img");
    // save writes FILE.chunks (a checksum per 4 KiB) beside the image.
    snapshot::save(
        &saved,
        &img,
        &SaveOptions::default(),
        &hostmem::Progress::new(),
    )
    .unwrap();
    assert!(
        snapshot::lazy::chunks_path(&img).exists(),
        "no chunk sums saved"
    );
    let guest = Backend::builder(Kind::Ram, "fc")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    let mut h = Handler::start(&dir, &img, &["--once", "--no-fill"]);
    let (s, _uffd) = handshake(&h, &mem, 4 * MIB);
    h.line(|l| l.contains("VM 1") && l.contains("serving"));
    // The handler reads the sums after it starts serving (a fault before they arrive is
    // served with its whole block), so one page of each 2 MiB block is touched in turn
    // until a touch is served by its 4 KiB chunk: smaps Rss grows by one page, not a block.
    let mut by_chunk = None;
    for block in 0..4u64 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = smaps_field(mem.host_addr(), "Rss");
        let off = block * 2 * MIB + 3 * 4096;
        let got = touched(&touch(&mem, off, 4096), "one page");
        assert_eq!(
            got,
            bytes[off as usize..off as usize + 4096],
            "block {block}"
        );
        let grew = smaps_field(mem.host_addr(), "Rss") - before;
        if grew <= 4096 {
            by_chunk = Some(block);
            break;
        }
    }
    assert!(
        by_chunk.is_some(),
        "every touch brought in its whole 2 MiB block: the chunk sums were not used"
    );
    drop(s);
    let st = hostmem_testkit::spawn::wait_bounded(&mut h.child, STEP).unwrap();
    assert_eq!(st.code(), Some(0), "{:#?}", h.seen);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A memfd guest registered MISSING and MINOR (`userfaultfd_minor_for`, as Firecracker
/// registers memory it maps from a file): the pages its page cache already holds —
/// written by the test through the memfd, never mapped here — are mapped as they are by
/// UFFDIO_CONTINUE, so the touch reads the test's bytes, not the memory file's; every
/// other page comes from the memory file; the background fill leaves the cached pages
/// alone. Anonymous memory is refused for minor faults with a message.
#[test]
fn pages_already_in_the_page_cache_are_mapped_by_minor_faults_not_read_from_the_file() {
    let dir = scratch("minor");
    let guest = Backend::builder(Kind::Memfd, "fc")
        .size(16 * MIB)
        .create()
        .unwrap();
    let mem = guest.hold().unwrap();
    let len = mem.len() as u64;
    let mut want = memory_file(&dir.join("mem"), len);
    let cached = noise(3 * 4096, 77);
    let (fd, base) = mem.fd().unwrap();
    let f = File::from(fd.try_clone_to_owned().unwrap());
    f.write_all_at(&cached[..2 * 4096], base + 3 * 4096)
        .unwrap();
    f.write_all_at(&cached[2 * 4096..], base + 1000 * 4096)
        .unwrap();
    want[3 * 4096..5 * 4096].copy_from_slice(&cached[..2 * 4096]);
    want[1000 * 4096..1001 * 4096].copy_from_slice(&cached[2 * 4096..]);

    let mut h = Handler::start(&dir, &dir.join("mem"), &[]);
    let uffd = userfaultfd_minor_for(&[&mem]).unwrap();
    let s = h.connect();
    let body = regions(mem.host_addr() as u64, len, 5 * MIB, mem.page_size());
    send(&s, body.as_bytes(), &[uffd.as_fd()]);
    h.line(|l| l.contains("VM 1") && l.contains("serving"));
    let got = touched(&touch(&mem, 0, len), "every page");
    same_bytes(&got, &want, 4096).unwrap();
    h.line(|l| l.contains("VM 1") && l.contains("filled"));
    drop(s);
    h.line(|l| l.contains("VM 1") && l.contains("done"));
    drop(uffd);

    let anon = Backend::builder(Kind::Ram, "anon")
        .size(4 * MIB)
        .create()
        .unwrap();
    let err = userfaultfd_minor_for(&[&anon.hold().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("not shared memory"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
