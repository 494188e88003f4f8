//! Lazy restore of a memfd (every other 2 MiB block random, warm image) against a copy
//! restore of the same image in the same run: time to usable, the background fill's
//! rate, and the first-touch latency of 4 KiB pages — touched in descending address
//! order while the fill runs upward, and again with the fill off (every touch of a new
//! block is a fault) — for the first restore of a freshly saved image, served by the
//! chunk sums `save` wrote beside it — and, as the floor, touches of hole pages (the
//! zero page: the userfaultfd round trip with nothing read).
//! A measurement, not a test:
//! `cargo run --release -p hostmem --example lazy_speed` (`LAZY_GIB=N`, default 1;
//! `LAZY_CHUNK=BYTES`: the saved chunk size, 0 for none, default `lazy::CHUNK`;
//! `LAZY_FILL_THREADS=N`: the fill's threads, default 1; `LAZY_FILL=idle|low|normal`:
//! their priority, default the library's (idle);
//! `LAZY_HUGE=1`: the restored memfds on 2 MiB huge pages — set the pool first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hostmem::snapshot::lazy::{chunks_path, ChunkSums, CHUNK};
use hostmem::snapshot::{self, FillPriority, Image, LazyOptions, RestoreOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;
const PAGE: usize = 4096;

/// Incompressible bytes for block `b` (a 64-bit LCG's high halves).
fn block_bytes(b: u64) -> Vec<u8> {
    let mut x = b.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK / 8)
        .flat_map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x ^ (x >> 29)).to_le_bytes()
        })
        .collect()
}

fn memfd(id: &str, size: u64) -> Backend {
    let b = Backend::builder(Kind::Memfd, id).size(size);
    let huge = id != "src" && std::env::var_os("LAZY_HUGE").is_some();
    let b = if huge {
        b.hugetlb(true).hugetlbsize(BLOCK)
    } else {
        b
    };
    b.create().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Touches one 4 KiB page in each of `blocks` (a page in the block's middle) and
/// returns each touch's latency, sorted.
fn touch(b: &Backend, blocks: &[u64]) -> Vec<Duration> {
    let hold = b.hold().unwrap();
    let mut buf = vec![0u8; PAGE];
    let mut lat: Vec<Duration> = blocks
        .iter()
        .map(|&blk| {
            let off = (blk * BLOCK + BLOCK / 2) as usize;
            let t = Instant::now();
            hold.read_at(off, &mut buf).unwrap();
            t.elapsed()
        })
        .collect();
    lat.sort();
    lat
}

fn report(what: &str, lat: &[Duration]) {
    println!(
        "{what}: {} touches, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        lat.len(),
        percentile(lat, 0.5).as_secs_f64() * 1e6,
        percentile(lat, 0.99).as_secs_f64() * 1e6,
        lat.last().unwrap().as_secs_f64() * 1e6
    );
}

fn main() {
    let gib: u64 = std::env::var("LAZY_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let size = gib << 30;
    let fill_threads: usize = std::env::var("LAZY_FILL_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let fill_priority = match std::env::var("LAZY_FILL").as_deref() {
        Ok("low") => FillPriority::Low,
        Ok("normal") => FillPriority::Normal,
        _ => FillPriority::Idle,
    };
    let dir = std::env::temp_dir().join(format!("hostmem-lazy-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mem.img");
    let data: Vec<u64> = (0..size / BLOCK).filter(|b| b % 2 == 0).collect();
    {
        let src = memfd("src", size);
        let hold = src.hold().unwrap();
        for &b in &data {
            hold.write_at((b * BLOCK) as usize, &block_bytes(b))
                .unwrap();
        }
        let opts = SaveOptions {
            chunk_size: std::env::var("LAZY_CHUNK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(CHUNK),
            ..SaveOptions::default()
        };
        snapshot::save(&src, &path, &opts, &Progress::new()).unwrap();
    }
    let image = Arc::new(Image::open(&path).unwrap());
    // What the first lazy restore of the image gets: the sums the save wrote.
    let sums = ChunkSums::load(&chunks_path(&path), &image)
        .ok()
        .map(Arc::new);
    println!(
        "chunk sums: {}",
        sums.as_ref()
            .map_or("none".into(), |s| format!("{} bytes a chunk", s.chunk))
    );
    image.verify(0, &Progress::new()).unwrap(); // warm the page cache
    let bytes = image.data_bytes() as f64;

    for round in 0..2 {
        println!("round {round}:");
        let dst = memfd("copy", size);
        let t = Instant::now();
        snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
        let copy = t.elapsed().as_secs_f64();
        println!(
            "copy restore: usable after {:.1} ms, {:.2} GiB/s",
            copy * 1e3,
            bytes / copy / (1u64 << 30) as f64
        );
        drop(dst);

        let dst = memfd("lazy", size);
        let t = Instant::now();
        let opts = LazyOptions {
            chunk_sums: sums.clone(),
            fill_threads,
            fill_priority,
            ..LazyOptions::default()
        };
        let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
        let usable = t.elapsed();
        // Descending: the fill runs upward, so most touches find their block unfilled.
        let down: Vec<u64> = data.iter().rev().copied().collect();
        let lat = touch(&dst, &down[..down.len() / 2]);
        let report_ = server.wait().unwrap();
        let fill = report_.filled_secs.unwrap_or(f64::NAN);
        println!(
            "lazy restore: usable after {:.2} ms; fill {:.2} GiB/s ({:.2}x the copy restore), {} faults",
            usable.as_secs_f64() * 1e3,
            bytes / fill / (1u64 << 30) as f64,
            copy / fill,
            report_.progress.faults
        );
        report("  first touch while the fill runs", &lat);
        drop(dst);

        let dst = memfd("faults", size);
        let opts = LazyOptions {
            background: false,
            chunk_sums: sums.clone(),
            ..LazyOptions::default()
        };
        let server = snapshot::restore_lazy(Arc::clone(&image), &dst, opts).unwrap();
        let lat = touch(&dst, &data);
        report("  first touch, fill off, the saved chunk sums", &lat);
        let again = touch(&dst, &data);
        report("  second touch of the same pages", &again);
        // The floor: a fault on a hole is answered with the zero page (no read, no
        // check, no page allocated), so its latency is the userfaultfd round trip alone.
        let holes: Vec<u64> = (0..size / BLOCK).filter(|b| b % 2 == 1).collect();
        let floor = touch(&dst, &holes);
        report(
            "  first touch of a hole page (the round trip alone)",
            &floor,
        );
        server.stop().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
