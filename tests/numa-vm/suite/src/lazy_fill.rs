//! A lazy restore's pages land where the backend's policy says (issue 21): UFFDIO_COPY
//! allocates in the kernel under the memory's policy, not on the serving thread's node.
//! Read back from numa_maps.

use std::sync::Arc;
use std::time::Duration;

use hostmem::snapshot::{self, Image, LazyOptions, SaveOptions};
use hostmem::{Backend, Kind, Policy, Progress};

use crate::common::{dist, ensure, nodes, own_numa_maps, Check, Topo, MIB};

const SIZE: u64 = 64 * MIB;

/// An unbound memfd with 16 of its 32 blocks written, saved; the image.
fn image(path: &std::path::Path) -> Result<Arc<Image>, String> {
    let src = Backend::builder(Kind::Memfd, "lazy-src")
        .size(SIZE)
        .create()
        .map_err(|e| e.to_string())?;
    let hold = src.hold().map_err(|e| e.to_string())?;
    for b in (0..SIZE / (2 * MIB)).step_by(2) {
        hold.fill((b * 2 * MIB) as usize, (2 * MIB) as usize, 0x5a ^ b as u8)
            .map_err(|e| e.to_string())?;
    }
    snapshot::save(&src, path, &SaveOptions::default(), &Progress::new())
        .map_err(|e| e.to_string())?;
    Image::open(path).map(Arc::new).map_err(|e| e.to_string())
}

/// A memfd bound to the third memory node, restored lazily with the background fill
/// whose threads run on the first node's CPUs (so a page placed by the thread's node
/// would show there): every page numa_maps shows is on the bound node, and there are
/// as many as the data.
pub fn lazy_fill_lands_on_the_bound_node(t: &Topo) -> Check {
    let n = t.mem[2];
    let dir = std::env::temp_dir().join(format!("numa-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("mem.img");
    let r = (|| {
        let image = image(&path)?;
        let dst = Backend::builder(Kind::Memfd, "lazy-dst")
            .size(SIZE)
            .policy(Policy::Bind)
            .host_nodes(nodes(&n.to_string()))
            .create()
            .map_err(|e| e.to_string())?;
        let opts = LazyOptions {
            cpus: t.host.cpus_of(&nodes(&t.mem[0].to_string())),
            ..LazyOptions::default()
        };
        let server =
            snapshot::restore_lazy(Arc::clone(&image), &dst, opts).map_err(|e| e.to_string())?;
        ensure(server.wait_timeout(Duration::from_secs(60)), || {
            "the fill did not end within 60 s".into()
        })?;
        let report = server.wait().map_err(|e| e.to_string())?;
        let addr = dst.host_addr().ok_or("not mapped")?;
        let p = own_numa_maps(addr)?;
        let pages: u64 = p.values().sum();
        let want = image.data_bytes() / 4096;
        ensure(p.keys().all(|&k| k == n) && pages >= want, || {
            format!("bind:{n}: {} ({pages} pages, {want} of data)", dist(&p))
        })?;
        Ok(format!(
            "bind:{n}, threads on node {}: {} after a lazy fill of {} MiB in {:.0} ms",
            t.mem[0],
            dist(&p),
            report.progress.bytes_filled >> 20,
            report.filled_secs.unwrap_or(0.0) * 1e3
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}
