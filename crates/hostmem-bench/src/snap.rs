//! `hostmem-bench snapshot`: issue 21's figures. A backend on 4 KiB pages, and one on
//! 2 MiB huge pages, half written in scattered 2 MiB runs of random bytes, is saved and
//! restored by hostmem and, in the same repetitions in alternating order, by the kernel
//! doing the same I/O without hostmem (`kernel.rs`). Every restore's bytes are checked
//! against a digest the bench read from the source itself.

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hostmem::size::{format_size, parse_size};
use hostmem::snapshot::{self, Image, PrivateOptions, RestoreOptions, SaveOptions};
use hostmem::{Backend, Progress};
use rustix::fs::{fadvise, syncfs, Advice};

use crate::guards::{HugePagesGuard, NoThp};
use crate::inproc::make_backend;
use crate::kernel;
use crate::modereport::{host_header, order, ModeRun};
use crate::modes::SnapArgs;
use crate::pattern::{digest, pick_runs, write_runs, RUN};
use crate::plan::{Mem, HUGE_2M};
use crate::runner::prime;

/// The two memories issue 21 names: 4 KiB pages (ram, THP off) and 2 MiB huge pages.
pub(crate) const KINDS: [(&str, Mem); 2] = [("4k", Mem::Ram4k), ("2m", Mem::MemfdHuge2m)];

pub(crate) struct Snap<'a> {
    pub args: &'a SnapArgs,
    pub size: u64,
    pub cpus: usize,
    pub progress: Arc<Progress>,
    pub run: ModeRun,
    /// The 2 MiB pool while the huge page kind runs.
    pub pool: RefCell<Option<HugePagesGuard>>,
}

impl Snap<'_> {
    pub fn check_stop(&self) -> Result<(), String> {
        if self.progress.is_cancelled() {
            return Err("interrupted".into());
        }
        Ok(())
    }

    pub fn backend(&self, mem: Mem, id: &str, size: u64) -> Result<Backend, String> {
        if let Some(pool) = self.pool.borrow_mut().as_mut() {
            pool.top_up(size / HUGE_2M)?;
        }
        make_backend(&mem.spec(id, size, false, self.cpus), &self.progress)
    }

    /// Touches and frees `bytes` of memory right before a timed run on fresh memory
    /// (this host hands idle memory back to its hypervisor; see docs/bench.md).
    pub fn prime(&self, mem: Mem, bytes: u64) -> Result<(), String> {
        if mem == Mem::MemfdHuge2m {
            return Ok(()); // the pool's pages stay with the kernel
        }
        prime(bytes, self.cpus)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.args.dir.join(name)
    }
}

fn lib<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Flushes the file system's dirty pages (untimed), so a timed write never pays for
/// the one before it.
fn settle(dir: &Path) -> Result<(), String> {
    let d = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    syncfs(&d).map_err(|e| format!("syncfs: {e}"))
}

/// Removes an image and the chunk sums `save` wrote beside it.
pub(crate) fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(hostmem::snapshot::lazy::chunks_path(path));
    let _ = std::fs::remove_file(hostmem::snapshot::stamp_path(path));
}

pub(crate) fn run(args: &SnapArgs) -> Result<ModeRun, String> {
    let size = parse_size(&args.size).ok_or("bad --size")? / HUGE_2M * HUGE_2M;
    if size < 4 * HUGE_2M {
        return Err("--size must be at least 8 MiB".into());
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let progress = Arc::new(Progress::new());
    let _events =
        hostmem_cli::signals::install(progress.clone()).map_err(|e| format!("signals: {e}"))?;
    let mut s = Snap {
        args,
        size,
        cpus: crate::allowed_cpus(),
        progress,
        run: ModeRun::default(),
        pool: RefCell::new(None),
    };
    let reps = args.common.reps.max(1);
    s.run.header = host_header(format!(
        "hostmem-bench snapshot: {} backends, half written in scattered 2 MiB runs of random bytes; medians of {reps} repetitions after {} warm-up, order rotating; images in {}",
        format_size(size),
        args.common.warmup,
        args.dir.display()
    ));
    let before = crate::busy::CpuSnapshot::now();
    for (key, mem) in KINDS {
        if args.common.wants(key) {
            s.check_stop()?;
            kind(&mut s, key, mem)?;
        }
    }
    if args.common.wants("clones") && !args.save_only && !args.lazy_only && !args.only_diff {
        s.check_stop()?;
        crate::clones::measure(&mut s)?;
    }
    s.run.busy = before
        .zip(crate::busy::CpuSnapshot::now())
        .and_then(|(a, b)| a.until(&b));
    crate::snapreport::tables(&mut s.run, size, args);
    Ok(s.run)
}

/// Everything measured on one kind of memory.
fn kind(s: &mut Snap, key: &str, mem: Mem) -> Result<(), String> {
    let _no_thp = NoThp::new(mem == Mem::Ram4k)?;
    let diff_size = parse_size(&s.args.diff_size).ok_or("bad --diff-size")? / HUGE_2M * HUGE_2M;
    if mem == Mem::MemfdHuge2m {
        let pages = s.size.max(2 * diff_size) / HUGE_2M;
        *s.pool.borrow_mut() = Some(HugePagesGuard::reserve(pages)?);
    }
    let img = s.path(&format!("snap-{key}.img"));
    let r = if s.args.only_diff {
        Ok(())
    } else {
        save_case(s, key, mem, &img).and_then(|want| match s.args.save_only {
            true => Ok(()),
            false => restore_case(s, key, mem, &img, want),
        })
    };
    let r =
        r.and_then(|()| s.check_stop())
            .and_then(|()| match s.args.save_only || s.args.lazy_only {
                true => Ok(()),
                false => crate::diffcase::measure(s, key, mem, diff_size),
            });
    remove(&img);
    // The pool is put back here, also after an error.
    s.pool.borrow_mut().take();
    r
}

/// The source backend written, then saved by hostmem and written plainly, alternating;
/// returns the source's digest.
fn save_case(s: &mut Snap, key: &str, mem: Mem, img: &Path) -> Result<u64, String> {
    let plain = s.path(&format!("plain-{key}.bin"));
    s.prime(mem, s.size)?;
    let src = s.backend(mem, "src", s.size)?;
    let hold = src.hold().map_err(|e| e.to_string())?;
    let runs = pick_runs(s.size, 0.5, 0x5eed);
    write_runs(&hold, &runs, s.cpus, 0x5eed)?;
    let written = runs.len() as u64 * RUN;
    let guest = kernel::guest(&src)?;
    let (warm, reps) = (s.args.common.warmup, s.args.common.reps.max(1));
    // --lazy-only: one save, its time kept, no plain write beside it.
    let (warm, reps, cases) = if s.args.lazy_only {
        (0, 1, 1)
    } else {
        (warm, reps, 2)
    };
    for rep in 0..warm + reps {
        for i in order(cases, rep) {
            s.check_stop()?;
            // Both files go before either is written, so each write starts from the
            // same page cache and file system: with only its own file removed, the
            // second write of a pair ran up to 4× faster than the first, whichever
            // it was (the one after a write of the same kind paid for that file's
            // freeing).
            remove(img);
            remove(&plain);
            settle(&s.args.dir)?;
            let (k, secs) = if i == 0 {
                let (started, cpu) = (std::time::Instant::now(), process_cpu());
                let r = snapshot::save(&src, img, &SaveOptions::default(), &s.progress)
                    .map_err(lib("save"))?;
                let secs = started.elapsed().as_secs_f64();
                if rep >= warm {
                    let used = process_cpu() - cpu;
                    s.run
                        .samples
                        .push(format!("snap/{key}/save-cpu"), Some(used));
                }
                // Holes the kernel reported (never read) and holes read as zeros.
                let sm = &mut s.run.samples;
                sm.push(
                    format!("snap/{key}/holes-unread"),
                    Some(r.unread_holes as f64),
                );
                sm.push(format!("snap/{key}/holes-read"), Some(r.zero_holes as f64));
                ("save", secs)
            } else {
                let cpu = process_cpu();
                let secs = kernel::plain_write(&guest, &runs, &plain)?;
                if rep >= warm {
                    let used = process_cpu() - cpu;
                    s.run
                        .samples
                        .push(format!("snap/{key}/plain-write-cpu"), Some(used));
                }
                ("plain-write", secs)
            };
            if rep >= warm {
                s.run.samples.push(format!("snap/{key}/{k}"), Some(secs));
            }
        }
    }
    remove(&plain);
    if !img.exists() {
        // The last run was the plain write, which removed the image first: the
        // restores need one, saved untimed.
        snapshot::save(&src, img, &SaveOptions::default(), &s.progress).map_err(lib("save"))?;
    }
    // Read after the saves: reading never-written private memory maps the zero page,
    // which the pagemap then shows as present, and the save would have to read (and
    // zero-check) every hole instead of skipping it.
    let want = digest(&hold)?;
    let disk = std::fs::metadata(img).map_err(|e| e.to_string())?.blocks() * 512;
    s.run
        .samples
        .push(format!("snap/{key}/image-disk"), Some(disk as f64));
    s.run
        .samples
        .push(format!("snap/{key}/written"), Some(written as f64));
    settle(&s.args.dir)?;
    Ok(want)
}

/// CPU seconds this process has used, all threads: what a save and the plain write
/// cost apart from waiting for CPUs other work holds (nothing else of the bench runs
/// while either is timed).
fn process_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Copy restore from a warm page cache against the parallel read and the single-threaded
/// whole copy, each into a fresh backend of the same kind; then the private restore.
fn restore_case(s: &mut Snap, key: &str, mem: Mem, img: &Path, want: u64) -> Result<(), String> {
    let image = Arc::new(Image::open(img).map_err(lib("open"))?);
    // Warm: every data block read (and checked) once, so the restores read the cache.
    image.verify(0, &s.progress).map_err(lib("verify"))?;
    let (warm, reps) = (s.args.common.warmup, s.args.common.reps.max(1));
    // "lazy": the time to usable (its fill and touches are kept apart).
    let names = ["restore", "pread", "whole-copy", "lazy"];
    let cases: Vec<usize> = if s.args.lazy_only {
        vec![0, 3]
    } else {
        (0..names.len()).collect()
    };
    for rep in 0..warm + reps {
        for i in order(cases.len(), rep).into_iter().map(|c| cases[c]) {
            s.check_stop()?;
            let touch = if i == 2 { s.size } else { image.data_bytes() };
            s.prime(mem, touch)?;
            let dst = s.backend(mem, "dst", s.size)?;
            let cpu = kernel::process_cpu();
            let secs = match i {
                0 => {
                    let started = std::time::Instant::now();
                    let opts = RestoreOptions::default();
                    snapshot::restore(&image, &dst, &opts, &s.progress).map_err(lib("restore"))?;
                    started.elapsed().as_secs_f64()
                }
                1 => kernel::parallel_read(&image, &kernel::guest(&dst)?, s.cpus)?,
                2 => kernel::whole_copy(&image, &kernel::guest(&dst)?)?,
                _ => {
                    let l = crate::lazycase::run(&image, &dst, rep as u64, s.args)?;
                    if rep >= warm {
                        let sm = &mut s.run.samples;
                        sm.push(format!("snap/{key}/lazy-filled"), l.filled);
                        sm.push(format!("snap/{key}/lazy-faults"), Some(l.faults as f64));
                        for t in l.touches {
                            sm.push(format!("snap/{key}/lazy-touch"), Some(t));
                        }
                        for t in l.floor {
                            sm.push(format!("snap/{key}/lazy-touch-hole"), Some(t));
                        }
                    }
                    l.usable
                }
            };
            if rep + 1 == warm + reps {
                let hold = dst.hold().map_err(|e| e.to_string())?;
                let ok = digest(&hold)? == want;
                s.run.samples.push(
                    format!("snap/{key}/{}-ok", names[i]),
                    Some(f64::from(u8::from(ok))),
                );
            }
            let cpu = kernel::process_cpu() - cpu;
            if rep >= warm {
                let sm = &mut s.run.samples;
                sm.push(format!("snap/{key}/{}", names[i]), Some(secs));
                if i < 2 {
                    sm.push(format!("snap/{key}/{}-cpu", names[i]), Some(cpu));
                }
            }
        }
    }
    if s.args.lazy_only {
        return Ok(());
    }
    private_case(s, key, &image, want)
}

/// The private restore: the first clone verifies the image (the builder reads every
/// data block) and leaves its stamp, then maps; later clones find the stamp and only
/// map. Each part timed; the bytes checked once.
fn private_case(s: &mut Snap, key: &str, image: &Image, want: u64) -> Result<(), String> {
    let (warm, reps) = (s.args.common.warmup, s.args.common.reps.max(1));
    let opts = PrivateOptions::default();
    for rep in 0..warm + reps {
        s.check_stop()?;
        // Every measured repetition has a first clone and a later one.
        let _ = std::fs::remove_file(snapshot::stamp_path(image.path()));
        for (first, tag) in [(true, "private-first"), (false, "private")] {
            let t0 = std::time::Instant::now();
            let builder =
                snapshot::private_builder(image, "priv", &opts).map_err(lib("private"))?;
            let t1 = std::time::Instant::now();
            let b = builder.create().map_err(lib("private map"))?;
            let t2 = std::time::Instant::now();
            if first && !snapshot::is_stamped(image) {
                return Err("the first private restore left no verified stamp".into());
            }
            if rep >= warm {
                let sm = &mut s.run.samples;
                let mut push =
                    |m: &str, secs: f64| sm.push(format!("snap/{key}/{tag}-{m}"), Some(secs));
                push("verify", (t1 - t0).as_secs_f64());
                push("map", (t2 - t1).as_secs_f64());
                push("usable", (t2 - t0).as_secs_f64());
            }
            if !first && rep + 1 == warm + reps {
                let ok = digest(&b.hold().map_err(|e| e.to_string())?)? == want;
                s.run.samples.push(
                    format!("snap/{key}/private-ok"),
                    Some(f64::from(u8::from(ok))),
                );
            }
        }
    }
    Ok(())
}

/// Drops `path`'s pages from the page cache (after flushing them), so what a later
/// step brings into the cache can be counted.
pub(crate) fn evict(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all().map_err(|e| e.to_string())?;
    fadvise(&f, 0, None, Advice::DontNeed).map_err(|e| format!("fadvise: {e}"))
}
