//! Time to usable of a lazy restore of a chain against its base alone, side by side:
//! a memfd (every other 2 MiB block data) saved as a full image, then one 4 KiB page
//! of every 2 MiB unit written and saved as a 4 KiB diff — every unit is then split
//! into its pieces (`chain::pieces`) before the memory is usable.
//! A measurement, not a test:
//! `cargo run --release -p hostmem --example chain_lazy_speed` (`CHAIN_GIB=N`, default
//! 2; `CHAIN_ROUNDS=N`, default 5).

use std::sync::Arc;
use std::time::Instant;

use hostmem::snapshot::{self, Dirty, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const BLOCK: u64 = 2 << 20;
const PAGE: u64 = 4096;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn memfd(id: &str, size: u64) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(size)
        .create()
        .unwrap()
}

/// Milliseconds until `restore_lazy_chain` of `chain` into a fresh memfd returns.
fn usable_ms(chain: &[Arc<Image>], size: u64) -> f64 {
    let dst = memfd("dst", size);
    let t = Instant::now();
    let server =
        snapshot::restore_lazy_chain(chain.to_vec(), &dst, LazyOptions::default()).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    server.stop().unwrap();
    ms
}

fn main() {
    let size = env("CHAIN_GIB", 2) << 30;
    let rounds = env("CHAIN_ROUNDS", 5);
    let dir = std::env::temp_dir().join(format!("hostmem-chain-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (base_path, diff_path) = (dir.join("base.img"), dir.join("diff.img"));
    let units = size / BLOCK;
    let src = memfd("src", size);
    let hold = src.hold().unwrap();
    for u in (0..units).step_by(2) {
        hold.write_at((u * BLOCK) as usize, &vec![0x5a; BLOCK as usize])
            .unwrap();
    }
    snapshot::save(&src, &base_path, &SaveOptions::default(), &Progress::new()).unwrap();
    let base = Arc::new(Image::open(&base_path).unwrap());
    // One page in every unit, at a different place in each.
    let mut bits = vec![0u64; (size / PAGE).div_ceil(64) as usize];
    for u in 0..units {
        let page = u * (BLOCK / PAGE) + u % (BLOCK / PAGE);
        hold.write_at((page * PAGE) as usize, &[0xa5; PAGE as usize])
            .unwrap();
        bits[(page / 64) as usize] |= 1 << (page % 64);
    }
    let dirty = Dirty {
        page_size: PAGE,
        bits: &bits,
    };
    snapshot::save_diff(&src, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    let diff = Arc::new(Image::open(&diff_path).unwrap());
    drop(hold);
    drop(src);
    base.verify(0, &Progress::new()).unwrap(); // warm the page cache
    println!(
        "{} GiB memfd, {units} units, diff of {} KiB blocks over every unit",
        size >> 30,
        diff.header().block_size >> 10
    );
    for round in 0..rounds {
        let alone = usable_ms(std::slice::from_ref(&base), size);
        let chain = usable_ms(&[Arc::clone(&base), Arc::clone(&diff)], size);
        println!("round {round}: usable after {chain:.2} ms (chain), {alone:.2} ms (base alone)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
