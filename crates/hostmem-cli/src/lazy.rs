//! `hostmem run --restore ID=FILE,mode=lazy`: the backend restored by userfaultfd,
//! usable at once, its fill followed on stderr (a bar on a terminal, a line when it
//! ends or fails), and the touch order kept beside the image (`FILE.order`) for the
//! next lazy restore's fill, with the chunk checksums (`FILE.chunks`: written by the
//! save, or learned by this restore) by which a first touch is served one 4 KiB page.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hostmem::snapshot::lazy::{chunks_path, load_order, order_path, save_order, ChunkSums};
use hostmem::snapshot::{self, Image, LazyOptions, LazyServer};
use hostmem::Backend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A lazy restore running while hostmem runs.
pub struct Lazy {
    id: String,
    image: Arc<Image>,
    file: PathBuf,
    /// Restored with diffs: the touch order and chunk sums are the chain's, not the
    /// image's, and are not written beside it.
    chain: bool,
    server: Arc<LazyServer>,
    watcher: Option<JoinHandle<()>>,
}

/// Starts a lazy restore of `file` (with `diffs` over it, oldest first: a chain) into
/// `backend`, filling first the blocks the last run touched first (`FILE.order`, when it
/// is there and fits the image).
pub fn start(
    id: &str,
    file: &Path,
    image: Image,
    diffs: Vec<Image>,
    backend: &Backend,
) -> Result<Lazy, String> {
    let image = Arc::new(image);
    let mut opts = LazyOptions::default();
    let order = order_path(file);
    if order.exists() {
        match load_order(&order, &image) {
            Ok(o) => opts.fill_order = o,
            Err(e) => eprintln!("hostmem: ignoring the touch order: {e}"),
        }
    }
    let chunks = chunks_path(file);
    if chunks.exists() {
        match ChunkSums::load(&chunks, &image) {
            Ok(c) => opts.chunk_sums = Some(Arc::new(c)),
            Err(e) => eprintln!("hostmem: ignoring the chunk checksums: {e}"),
        }
    }
    let chain = !diffs.is_empty();
    let images: Vec<Arc<Image>> = std::iter::once(Arc::clone(&image))
        .chain(diffs.into_iter().map(Arc::new))
        .collect();
    let server = snapshot::restore_lazy_chain(images, backend, opts).map_err(|e| e.to_string())?;
    let server = Arc::new(server);
    let watcher = Some(watch(id.to_string(), Arc::clone(&server)));
    Ok(Lazy {
        id: id.to_string(),
        image,
        file: file.to_path_buf(),
        chain,
        server,
        watcher,
    })
}

/// Follows the fill: a bar on a terminal; a line when it ends, or as soon as a block
/// fails (checked every 100 ms, so within the second the error arrives).
fn watch(id: String, server: Arc<LazyServer>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let p = server.progress();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(p.bytes_total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "lazy fill {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let mut told = 0;
        loop {
            let ended = server.wait_timeout(Duration::from_millis(100));
            let p = server.progress();
            if let Some(bar) = &bar {
                bar.set_position(p.bytes_filled);
            }
            for e in &p.errors[told..] {
                eprintln!("hostmem: lazy restore of '{id}': {e} (its pages raise SIGBUS)");
            }
            told = p.errors.len();
            if p.filled || p.gone {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                eprintln!(
                    "hostmem: lazy fill of '{id}' done: {} MiB in {:.1} ms, {} faults served",
                    p.bytes_filled >> 20,
                    p.secs * 1e3,
                    p.faults
                );
                return;
            }
            if ended {
                // A block failed and the fill goes on: wait_timeout answers at once now.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

impl Lazy {
    /// On exit: waits for the fill, keeps the touch order and the chunk checksums beside
    /// the image (a failure to write them is a warning; not for a chain), and gives the
    /// first error, if a block failed.
    pub fn finish(mut self) -> Result<(), String> {
        let what = format!("--restore {}={}", self.id, self.file.display());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let server = Arc::try_unwrap(self.server)
            .map_err(|_| format!("{what}: the fill is still watched"))?;
        let report = server.wait().map_err(|e| format!("{what}: {e}"))?;
        if self.chain {
            return Ok(());
        }
        let order = order_path(&self.file);
        if let Err(e) = save_order(&order, &self.image, &report.touched) {
            eprintln!("hostmem: warning: {what}: {e}");
        }
        let chunks = chunks_path(&self.file);
        if let Err(e) = report.chunk_sums.save(&chunks, &self.image) {
            eprintln!("hostmem: warning: {what}: {e}");
        }
        Ok(())
    }
}
