//! Lazy restore of a chain (a 2 MiB-block base, then diffs of small blocks): the memory
//! reads back what the test itself last wrote, byte for byte through /proc/self/mem,
//! served by faults alone and by the background fill; a corrupt diff block is never
//! served and its error names the diff's file; a chain that is not one is refused
//! before the memory is touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::lazy::{resident, touch_all, within, DEADLINE};
use crate::*;
use hostmem::numa::HugePool;
use hostmem::snapshot::lazy::{chunks_path, ChunkSums};
use hostmem::snapshot::{self, Dirty, Image, LazyOptions, LazyServer, SaveOptions};
use hostmem::{Backend, Builder, InUse, Kind, Progress};

const SIZE: u64 = 32 * MIB;
const PAGE: u64 = 4096;
const ONE_SECOND: Duration = Duration::from_secs(1);
/// 2 MiB blocks no diff touches: served as a lone image's blocks.
const UNTOUCHED: std::ops::RangeInclusive<u64> = 11..=13;

fn memfd(id: &str) -> Builder {
    Backend::builder(Kind::Memfd, id).size(SIZE)
}

/// Anonymous memory (private, THP where the kernel gives it).
fn ram(id: &str) -> Builder {
    Backend::builder(Kind::Ram, id).size(SIZE)
}

/// A base and two diffs on it, and the bytes the memory held when the last was saved.
struct Chain {
    paths: Vec<PathBuf>,
    want: Vec<u8>,
    /// Pages whose bytes only diff 2 holds (written last, random).
    d2_pages: Vec<u64>,
}

impl Chain {
    fn images(&self, which: &[usize]) -> Vec<Arc<Image>> {
        which
            .iter()
            .map(|&i| Arc::new(Image::open(&self.paths[i]).unwrap()))
            .collect()
    }
}

/// The test's copy of a change to the memory: `data` at `off`, into the memory, the
/// expected bytes and a 4 KiB-page dirty bitmap.
struct Writer<'a> {
    hold: &'a InUse,
    want: &'a mut Vec<u8>,
    bits: Vec<u64>,
}

impl Writer<'_> {
    fn put(&mut self, off: u64, data: &[u8]) {
        self.hold.write_at(off as usize, data).unwrap();
        self.want[off as usize..off as usize + data.len()].copy_from_slice(data);
        for p in off / PAGE..(off + data.len() as u64).div_ceil(PAGE) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    fn page(&mut self, p: u64, seed: u64) {
        self.put(p * PAGE, &random_bytes(seed, PAGE as usize));
    }

    fn zero(&mut self, off: u64, len: u64) {
        self.put(off, &vec![0u8; len as usize]);
    }

    /// Saves a diff of `src` on `base` with blocks of `block_size` from the pages
    /// written since the last, and opens it.
    fn save_diff(&mut self, src: &Backend, base: &Image, path: &Path, block_size: u64) -> Image {
        let n = self.bits.len();
        let bits = std::mem::replace(&mut self.bits, vec![0; n]);
        let dirty = Dirty {
            page_size: PAGE,
            bits: &bits,
        };
        let opts = SaveOptions {
            block_size,
            ..SaveOptions::default()
        };
        snapshot::save_diff_with(src, base, &dirty, path, &opts, &Progress::new()).unwrap();
        Image::open(path).unwrap()
    }
}

/// Saves a chain of a memfd: the base (2 MiB blocks, chunk sums beside it) of random
/// bytes everywhere but block 5 (a hole); diff 1 (blocks of `d1_block`): pages
/// rewritten across the memory but the `UNTOUCHED` blocks, block 2 rewritten whole, pages written into block 5,
/// pages and block 7 zeroed; diff 2 (blocks of `d2_block`): some of diff 1's pages
/// rewritten, a page of the zeroed block 7 written, block 9 zeroed, a page of block 2
/// zeroed, fresh pages.
fn saved_chain(dir: &TempDir, d1_block: u64, d2_block: u64, seed: u64) -> Chain {
    let paths: Vec<PathBuf> = ["base.img", "d1.img", "d2.img"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let src = memfd("src").create().unwrap();
    let hold = src.hold().unwrap();
    let mut want = random_bytes(seed, SIZE as usize);
    want[(5 * BLOCK) as usize..(6 * BLOCK) as usize].fill(0);
    hold.write_at(0, &want).unwrap();
    snapshot::save(&src, &paths[0], &SaveOptions::default(), &Progress::new()).unwrap();
    assert!(
        snapshot::lazy::chunks_path(&paths[0]).exists(),
        "the base has no chunk sums: the chunk path would go untested"
    );
    let base = Image::open(&paths[0]).unwrap();

    let pages = SIZE / PAGE;
    let ppb = BLOCK / PAGE;
    let mut w = Writer {
        hold: &hold,
        want: &mut want,
        bits: vec![0; pages.div_ceil(64) as usize],
    };
    let spread = |from: u64, stride: usize| -> Vec<u64> {
        (from..pages)
            .step_by(stride)
            .filter(|p| !UNTOUCHED.contains(&(p / ppb)))
            .collect()
    };
    // Diff 1. Pages spread over every block but the untouched ones (the test's own
    // stride, not hostmem's).
    let d1_pages = spread(0, 37);
    for (n, &p) in d1_pages.iter().enumerate() {
        w.page(p, seed + 1000 + n as u64);
    }
    w.put(2 * BLOCK, &random_bytes(seed + 1, BLOCK as usize));
    for p in [5 * ppb + 3, 5 * ppb + 4, 5 * ppb + 300] {
        w.page(p, seed + 2000 + p);
    }
    for p in [ppb + 11, 3 * ppb + 12, 10 * ppb + 13] {
        w.zero(p * PAGE, PAGE);
    }
    w.zero(7 * BLOCK, BLOCK);
    let d1 = w.save_diff(&src, &base, &paths[1], d1_block);

    // Diff 2.
    let again: Vec<u64> = d1_pages.iter().copied().step_by(5).collect();
    let fresh: Vec<u64> = spread(20, 53).into_iter().filter(|p| p % 37 != 0).collect();
    let d2_pages: Vec<u64> = again.iter().chain(&fresh).copied().collect();
    for (n, &p) in d2_pages.iter().enumerate() {
        w.page(p, seed + 3000 + n as u64);
    }
    w.page(7 * ppb + 100, seed + 4000);
    w.zero(9 * BLOCK, BLOCK);
    w.zero((2 * ppb + 200) * PAGE, PAGE);
    w.save_diff(&src, &d1, &paths[2], d2_block);
    // Pages of diff 2 no later change touched (block 9 was zeroed after).
    let d2_pages = d2_pages
        .into_iter()
        .filter(|p| p / ppb != 9 && *p != 2 * ppb + 200)
        .collect();
    Chain {
        paths,
        want,
        d2_pages,
    }
}

/// Restores `chain` lazily into a fresh backend from `make` with the fill off (every
/// page touched, through the mapping), then into another with the fill on, and checks
/// the memory against the test's bytes each time.
fn lazy_chain_round_trip(tag: &str, chain: &Chain, make: &dyn Fn(&str) -> Builder) {
    let dst = make("dst").create().unwrap();
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy_chain(chain.images(&[0, 1, 2]), &dst, opts).unwrap();
    assert_eq!(resident(&dst), 0, "{tag}: pages resident before any touch");
    let hold = dst.hold().unwrap();
    within(DEADLINE, tag, move || touch_all(&hold));
    assert_same_bytes(
        &read_memory(&dst),
        &chain.want,
        &format!("{tag}, served by faults"),
    );
    let p = server.progress();
    assert!(p.errors.is_empty(), "{tag}: {:?}", p.errors);
    assert!(p.faults > 0, "{tag}: the reads were not served by faults");
    let report = server.stop().unwrap();
    assert!(
        report.touched.is_empty(),
        "{tag}: a chain's touch order was kept"
    );

    let dst = make("dst2").create().unwrap();
    let server =
        snapshot::restore_lazy_chain(chain.images(&[0, 1, 2]), &dst, LazyOptions::default())
            .unwrap();
    assert!(
        server.wait_timeout(DEADLINE),
        "{tag}: the background fill did not finish in {DEADLINE:?}"
    );
    let report = within(DEADLINE, tag, move || server.wait()).unwrap();
    assert!(report.progress.filled, "{tag}: {report:?}");
    assert_same_bytes(&read_memory(&dst), &chain.want, &format!("{tag}, filled"));
}

#[test]
fn lazy_chain_of_4k_diffs_into_a_memfd_reads_the_newest_bytes() {
    let dir = TempDir::new("lazy-chain-memfd");
    let chain = saved_chain(&dir, PAGE, PAGE, 51);
    lazy_chain_round_trip("memfd, 4 KiB diffs", &chain, &memfd);
}

#[test]
fn lazy_chain_of_4k_diffs_into_anonymous_ram_reads_the_newest_bytes() {
    let dir = TempDir::new("lazy-chain-ram");
    let chain = saved_chain(&dir, PAGE, PAGE, 52);
    lazy_chain_round_trip("ram, 4 KiB diffs", &chain, &ram);
}

/// On 2 MiB huge pages a unit is one page: the 4 KiB pieces of the diffs are
/// assembled into it and it is copied whole, by a fault and by the fill alike.
#[test]
fn lazy_chain_of_4k_diffs_into_hugetlb_2m_reads_the_newest_bytes() {
    let found = HugePool::read(2 * MIB, None).map_or(0, |p| p.total);
    // Two destinations: 32 pages of 2 MiB.
    let Ok(_pool) = PoolGuard::try_set(2 * MIB, found + 32) else {
        panic!("the kernel could not make 32 more huge pages of 2 MiB");
    };
    let dir = TempDir::new("lazy-chain-hugetlb");
    let chain = saved_chain(&dir, PAGE, PAGE, 57);
    let make = |id: &str| memfd(id).hugetlb(true).hugetlbsize(2 * MIB);
    lazy_chain_round_trip("hugetlb 2 MiB, 4 KiB diffs", &chain, &make);
}

/// A 64 KiB diff under a 4 KiB one: a 64 KiB block is a source with the newer diff's
/// pages between its pieces, read and checked once per unit.
#[test]
fn lazy_chain_of_a_64k_then_a_4k_diff_reads_the_newest_bytes() {
    let dir = TempDir::new("lazy-chain-64k");
    let chain = saved_chain(&dir, 64 << 10, PAGE, 53);
    lazy_chain_round_trip("memfd, 64 KiB + 4 KiB diffs", &chain, &memfd);
}

/// With the full image's chunk sums, a touch of a block no diff touches brings in one
/// 4 KiB chunk, as a lone image's restore does, and a touch of a block a diff touches
/// brings in the whole block (its bytes assembled and checked whole): judged by what
/// smaps says is resident, the bytes read through /proc/self/mem.
#[test]
fn lazy_chain_serves_untouched_blocks_by_chunk_and_diff_touched_blocks_whole() {
    let dir = TempDir::new("lazy-chain-chunks");
    let chain = saved_chain(&dir, PAGE, PAGE, 58);
    let images = chain.images(&[0, 1, 2]);
    let sums = ChunkSums::load(&chunks_path(&chain.paths[0]), &images[0]).unwrap();
    let opts = LazyOptions {
        background: false,
        chunk_sums: Some(Arc::new(sums)),
        ..LazyOptions::default()
    };
    let dst = memfd("dst").create().unwrap();
    let server = snapshot::restore_lazy_chain(images, &dst, opts).unwrap();
    let hold = dst.hold().unwrap();
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let addr = dst.host_addr().unwrap() as u64;
    let mut page = vec![0u8; PAGE as usize];
    let mut touch = |off: u64| {
        let h = hold.clone();
        within(DEADLINE, "a touch", move || {
            let mut buf = vec![0u8; PAGE as usize];
            h.read_at(off as usize, &mut buf).unwrap();
        });
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut page, addr + off).unwrap();
        let o = off as usize;
        assert_eq!(
            page[..],
            chain.want[o..o + PAGE as usize],
            "page at {off:#x}"
        );
        resident(&dst)
    };
    let untouched = touch(*UNTOUCHED.start() * BLOCK + 7 * PAGE);
    assert_eq!(untouched, PAGE, "a block no diff touches: one chunk");
    let touched = touch(3 * BLOCK + 7 * PAGE);
    assert_eq!(
        touched - untouched,
        BLOCK,
        "a block a diff touches: the whole block"
    );
    server.stop().unwrap();
}

/// A chain with a byte flipped (found in the file by the test's bytes) in a page only
/// diff 2 holds, past block 4 (so a good unit can be touched first); that page, and
/// the chain restored lazily into a fresh memfd with the fill off.
fn corrupt_chain_restored(dir: &TempDir, seed: u64) -> (Chain, u64, Backend, LazyServer) {
    let chain = saved_chain(dir, PAGE, PAGE, seed);
    let bad = *chain
        .d2_pages
        .iter()
        .find(|&&p| p * PAGE >= 4 * BLOCK)
        .unwrap();
    let off = (bad * PAGE) as usize;
    let at = find_in_file(&chain.paths[2], &chain.want[off..off + 64]);
    flip_byte(&chain.paths[2], at + 100);
    let dst = memfd("dst").create().unwrap();
    let opts = LazyOptions {
        background: false,
        ..LazyOptions::default()
    };
    let server = snapshot::restore_lazy_chain(chain.images(&[0, 1, 2]), &dst, opts).unwrap();
    (chain, bad, dst, server)
}

/// Block `b` read through the mapping (served by faults) holds the chain's bytes.
fn block_is_served(hold: &InUse, chain: &Chain, b: u64) {
    let h = hold.clone();
    let at = (b * BLOCK) as usize;
    let got = within(DEADLINE, "a good block", move || {
        let mut buf = vec![0u8; BLOCK as usize];
        h.read_at(at, &mut buf).unwrap();
        buf
    });
    let what = format!("block {b}");
    assert_same_bytes(&got, &chain.want[at..at + BLOCK as usize], &what);
}

#[test]
fn lazy_chain_with_a_corrupt_diff_block_names_the_diff_and_never_serves_it() {
    let dir = TempDir::new("lazy-chain-bad");
    let (chain, bad, dst, server) = corrupt_chain_restored(&dir, 54);
    let unit = bad * PAGE / BLOCK;
    let hold = dst.hold().unwrap();
    // A good unit that diff 2 touches (block 2) first: served from the chain.
    block_is_served(&hold, &chain, 2);

    let touched = Instant::now();
    let h = hold.clone();
    // Another page of the bad unit than the bad one: the unit is served whole or not.
    let other = if bad % (BLOCK / PAGE) == 0 {
        bad + 1
    } else {
        bad - 1
    };
    let touch = within(DEADLINE, "the bad unit", move || {
        let mut buf = vec![0u8; PAGE as usize];
        h.read_at((other * PAGE) as usize, &mut buf).map(|_| buf)
    });
    assert!(
        touch.is_err(),
        "a touch of the unit with a corrupt diff block read bytes"
    );
    assert!(
        server.wait_timeout(ONE_SECOND),
        "no error within 1 s of the touch"
    );
    assert!(
        touched.elapsed() <= ONE_SECOND + Duration::from_millis(200),
        "error after {:?}",
        touched.elapsed()
    );
    let p = server.progress();
    let d2 = chain.paths[2].display().to_string();
    assert!(
        p.errors.len() == 1
            && p.errors[0].starts_with(&format!("{d2}: block {bad} "))
            && p.errors[0].contains("checksum mismatch"),
        "not naming {d2} block {bad}: {:?}",
        p.errors
    );
    // Neither the bad page nor any other of its unit is in memory.
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut page = vec![0u8; PAGE as usize];
    let addr = dst.host_addr().unwrap() as u64;
    for q in [bad, other, unit * BLOCK / PAGE] {
        assert!(
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut page, addr + q * PAGE).is_err(),
            "the kernel has a page at page {q} of the unit with the corrupt block"
        );
    }
    // The other units are still served.
    block_is_served(&hold, &chain, 3);
    drop(hold);
    let e = server.stop().unwrap_err();
    assert_eq!(e.block(), Some(bad), "{e}");
    assert!(e.to_string().starts_with(&d2), "{e}");
}

/// The toucher of a unit with a corrupt diff block gets SIGBUS: a plain load
/// (vm-memory's copy, as a VMM's device model makes it), in a child process.
#[cfg(feature = "vm-memory")]
#[test]
fn lazy_chain_touch_of_a_corrupt_diff_block_raises_sigbus_in_the_toucher() {
    let test = "lazy_chain::lazy_chain_touch_of_a_corrupt_diff_block_raises_sigbus_in_the_toucher";
    if let Some(run) = child_run(test) {
        run.assert_printed("CHILD read block 2")
            .assert_printed("CHILD touching the bad unit");
        assert_eq!(
            run.signal,
            Some(7), // SIGBUS
            "the toucher was not killed by SIGBUS: exit {:?}\n{}\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
        assert!(
            !run.stdout.contains("CHILD read the bad unit"),
            "{}",
            run.stdout
        );
        return;
    }
    use hostmem::vm_memory::{Bytes, GuestAddress};
    use hostmem::vmm::{guest_memory, RegionSpec};
    use std::io::Write;
    let dir = TempDir::new("lazy-chain-sigbus");
    let (chain, bad, dst, _server) = corrupt_chain_restored(&dir, 55);
    let mem = guest_memory::<()>(&[RegionSpec::whole(&dst, GuestAddress(0))]).unwrap();
    let mut buf = vec![0u8; PAGE as usize];
    mem.read_slice(&mut buf, GuestAddress(2 * BLOCK)).unwrap();
    let b2 = (2 * BLOCK) as usize;
    assert_eq!(buf, chain.want[b2..b2 + PAGE as usize]);
    println!("CHILD read block 2");
    println!("CHILD touching the bad unit");
    std::io::stdout().flush().unwrap();
    mem.read_slice(&mut buf, GuestAddress(bad * PAGE)).unwrap();
    println!("CHILD read the bad unit");
}

#[test]
fn lazy_chain_that_is_not_one_is_refused_before_the_memory_is_touched() {
    let dir = TempDir::new("lazy-chain-refused");
    let chain = saved_chain(&dir, PAGE, PAGE, 56);
    let dst = memfd("dst").create().unwrap();
    // Memory in use: a refusal after the restore began would have discarded it.
    dst.hold().unwrap().fill(0, SIZE as usize, 0x5a).unwrap();
    let cases: [(&[usize], &str); 4] = [
        (&[0, 2], "is not the base of"),
        (&[1, 2], "a chain starts with a full image"),
        (&[2], "a chain starts with a full image"),
        (&[0, 2, 1], "is not the base of"),
    ];
    for (which, why) in cases {
        let r = snapshot::restore_lazy_chain(chain.images(which), &dst, LazyOptions::default());
        let e = r.err().unwrap_or_else(|| panic!("{which:?}: accepted"));
        assert!(e.to_string().contains(why), "{which:?}: {e}");
        let mem = read_memory(&dst);
        assert!(
            mem.iter().all(|&b| b == 0x5a),
            "{which:?}: the memory was touched before the refusal"
        );
    }
    let r = snapshot::restore_lazy_chain(Vec::new(), &dst, LazyOptions::default());
    assert!(r.is_err(), "an empty chain was accepted");
    // A lone diff through restore_lazy: refused alike.
    let e = snapshot::restore_lazy(chain.images(&[1]).remove(0), &dst, LazyOptions::default())
        .err()
        .expect("a lone diff was restored lazily");
    assert!(
        e.to_string().contains("a chain starts with a full image"),
        "{e}"
    );
    assert!(read_memory(&dst).iter().all(|&b| b == 0x5a));
}
