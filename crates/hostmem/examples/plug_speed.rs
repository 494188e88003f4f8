//! Plugging 1 GiB in 2 MiB blocks against a plain prealloc of a 1 GiB backend of the
//! same kind, and unplugging it against one unplug of a single 1 GiB block (one madvise
//! or fallocate call, the closest baseline without `unsafe`), for ram and memfd, three
//! rounds in one run, ratios printed. A measurement, not a test:
//! `cargo run --release -p hostmem --example plug_speed`.

use std::time::Instant;

use hostmem::plug::Blocks;
use hostmem::{Backend, Kind};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 2 << 20;

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() {
    for kind in [Kind::Ram, Kind::Memfd] {
        for round in 1..=3 {
            let t = Instant::now();
            let plain = Backend::builder(kind, "plain")
                .size(GIB)
                .prealloc(true)
                .create()
                .unwrap();
            let prealloc = secs(t);
            drop(plain);

            let b = Backend::builder(kind, "plug")
                .size(GIB)
                .reserve(false)
                .create()
                .unwrap();
            let mut blocks = Blocks::new(&b, BLOCK).unwrap();
            let t = Instant::now();
            blocks.plug(0..GIB).unwrap();
            let plug = secs(t);
            let t = Instant::now();
            let how = blocks.unplug(0..GIB, false).unwrap().how;
            let unplug = secs(t);
            blocks.plug(0..GIB).unwrap();
            let mut whole = Blocks::new(&b, GIB).unwrap();
            let t = Instant::now();
            whole.unplug(0..GIB, false).unwrap();
            let one_call = secs(t);
            println!(
                "{kind:?} round {round}: plug {:.1} ms vs prealloc {:.1} ms (x{:.2}); unplug ({how:?}) {:.2} ms vs one 1 GiB block {:.2} ms (x{:.2})",
                plug * 1e3,
                prealloc * 1e3,
                plug / prealloc,
                unplug * 1e3,
                one_call * 1e3,
                unplug / one_call
            );
        }
    }
}
