//! Save and copy-restore of a 1 GiB memfd half filled with random bytes (every other
//! 2 MiB block), warm, against a plain sequential write and read of the same bytes in
//! the same run; three rounds, ratios printed. A measurement, not a test:
//! `cargo run --release -p hostmem --example snapshot_speed` (`SNAPSHOT_THREADS=N` to
//! set the threads; 0: hostmem's choice).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use hostmem::snapshot::{self, Image, RestoreOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BLOCK: u64 = 2 * MIB;

/// Random bytes (xorshift64*), so the data is not compressible or zero.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn gib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / GIB as f64
}

fn main() {
    let size = GIB;
    let dir = std::env::temp_dir().join(format!("hostmem-snapshot-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Backend::builder(Kind::Memfd, "src")
        .size(size)
        .create()
        .unwrap();
    let hold = src.hold().unwrap();
    // Every other 2 MiB block holds data: 512 MiB.
    let data: Vec<u64> = (0..size / BLOCK).filter(|b| b % 2 == 0).collect();
    for &b in &data {
        hold.write_at((b * BLOCK) as usize, &random_bytes(b, BLOCK as usize))
            .unwrap();
    }
    let bytes = data.len() as u64 * BLOCK;
    let mut buf = vec![0u8; BLOCK as usize];
    // SNAPSHOT_THREADS=N to compare thread counts (0: hostmem's choice).
    let threads = std::env::var("SNAPSHOT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let opts = SaveOptions {
        threads,
        ..SaveOptions::default()
    };

    for round in 0..3 {
        // Plain sequential write: the data blocks, one thread, into a plain file.
        // Both files start absent: truncating the last round's file (under writeback)
        // would be timed otherwise.
        let plain = dir.join("plain.raw");
        let img = dir.join("mem.img");
        let _ = std::fs::remove_file(&plain);
        let _ = std::fs::remove_file(&img);
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&plain)
            .unwrap();
        for &b in &data {
            hold.read_at((b * BLOCK) as usize, &mut buf).unwrap();
            f.write_all(&buf).unwrap();
        }
        let plain_write = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let r = snapshot::save(&src, &img, &opts, &Progress::new()).unwrap();
        let save = t.elapsed().as_secs_f64();
        println!("  (save: {:.3} s copying blocks)", r.secs);

        // Plain sequential read: the plain file back into a fresh memfd.
        let dst = Backend::builder(Kind::Memfd, "dst")
            .size(size)
            .create()
            .unwrap();
        let dh = dst.hold().unwrap();
        let t = Instant::now();
        for (i, &b) in data.iter().enumerate() {
            f.read_exact_at(&mut buf, i as u64 * BLOCK).unwrap();
            dh.write_at((b * BLOCK) as usize, &buf).unwrap();
        }
        let plain_read = t.elapsed().as_secs_f64();
        drop((dh, dst));

        let dst = Backend::builder(Kind::Memfd, "dst")
            .size(size)
            .create()
            .unwrap();
        let t = Instant::now();
        let image = Image::open(&img).unwrap();
        snapshot::restore(&image, &dst, &RestoreOptions { threads }, &Progress::new()).unwrap();
        let restore = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {} MiB of data in 1 GiB, {} threads\n  \
             save    {save:.3} s = {:.2} GiB/s of data; plain write {plain_write:.3} s = {:.2} GiB/s; ratio {:.2}\n  \
             restore {restore:.3} s = {:.2} GiB/s of data; plain read  {plain_read:.3} s = {:.2} GiB/s; ratio {:.2}",
            bytes / MIB,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            gib_s(bytes, save),
            gib_s(bytes, plain_write),
            plain_write / save,
            gib_s(bytes, restore),
            gib_s(bytes, plain_read),
            plain_read / restore,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
