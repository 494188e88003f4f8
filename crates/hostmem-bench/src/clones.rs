//! Many private clones of one image at once, as a sandbox fleet starts them: child
//! processes (this program, hidden `clone` mode), each restoring the image privately,
//! reading all of it (as a running guest touches its memory) and writing a share of its
//! 4 KiB pages. What the host pays is read from the kernel while all of them hold
//! their memory: each clone's proportional set size (Pss: a page-cache page mapped by
//! all clones counts once in the sum, a copied page once for its clone), their dirty
//! private bytes, and the host-wide MemFree and Cached.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use hostmem::size::parse_size;
use hostmem::snapshot::{self, Image, SaveOptions};

use crate::diffcase::random_pages;
use crate::pattern::{kb_field, meminfo, pick_runs, smaps_field, write_runs, RUN};
use crate::plan::Mem;
use crate::snap::{evict, Snap};

/// How long all clones may take to become ready.
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Args, Clone)]
pub(crate) struct CloneArgs {
    #[arg(long)]
    image: PathBuf,
    #[arg(long, default_value_t = 5)]
    write_pct: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The child: restore, read everything, write its share, say `ready ADDR SECS`, then
/// hold the memory until stdin closes.
pub(crate) fn child(a: &CloneArgs) -> Result<(), String> {
    let image = Image::open(&a.image).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let b = snapshot::restore_private(&image, "clone", &Default::default())
        .map_err(|e| e.to_string())?;
    let usable = t.elapsed().as_secs_f64();
    let hold = b.hold().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; RUN as usize];
    let len = hold.len() as u64;
    let mut off = 0;
    while off < len {
        let n = RUN.min(len - off) as usize;
        hold.read_at(off as usize, &mut buf[..n])
            .map_err(|e| e.to_string())?;
        off += n as u64;
    }
    let pages = len / 4096;
    let (picked, _) = random_pages(len, pages * a.write_pct / 100, a.seed);
    for p in picked {
        hold.write_at((p * 4096) as usize, &a.seed.to_le_bytes())
            .map_err(|e| e.to_string())?;
    }
    println!("ready {:x} {usable}", hold.host_addr());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

struct Ready {
    addr: usize,
    usable: f64,
}

fn spawn(image: &std::path::Path, pct: u64, seed: u64) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .arg("clone")
        .arg("--image")
        .arg(image)
        .args(["--write-pct", &pct.to_string(), "--seed", &seed.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting a clone: {e}"))
}

/// Waits for every child's `ready` line (or its end) until the deadline.
fn wait_ready(children: &mut [Child]) -> Result<Vec<Ready>, String> {
    let (tx, rx) = mpsc::channel();
    for (i, c) in children.iter_mut().enumerate() {
        let out = c.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send((i, line));
        });
    }
    let end = Instant::now() + DEADLINE;
    let mut ready: Vec<Option<Ready>> = children.iter().map(|_| None).collect();
    for _ in 0..children.len() {
        let left = end.saturating_duration_since(Instant::now());
        let (i, line) = rx
            .recv_timeout(left)
            .map_err(|_| "the clones were not all ready within 300 s".to_string())?;
        let mut f = line.split_whitespace();
        let parsed = (f.next() == Some("ready"))
            .then(|| {
                let addr = usize::from_str_radix(f.next()?, 16).ok()?;
                let usable = f.next()?.parse().ok()?;
                Some(Ready { addr, usable })
            })
            .flatten();
        ready[i] = Some(parsed.ok_or_else(|| format!("clone {i} failed: {line:?}"))?);
    }
    Ok(ready.into_iter().flatten().collect())
}

pub(crate) fn measure(s: &mut Snap) -> Result<(), String> {
    let len = parse_size(&s.args.clone_size).ok_or("bad --clone-size")? / RUN * RUN;
    let (n, pct) = (s.args.clones, s.args.clone_write_pct);
    let path = s.args.dir.join("clone.img");
    {
        let _no_thp = crate::guards::NoThp::new(true)?;
        let src = s.backend(Mem::Ram4k, "csrc", len)?;
        let hold = src.hold().map_err(|e| e.to_string())?;
        write_runs(&hold, &pick_runs(len, 1.0, 0xc10e), s.cpus, 0xc10e)?;
        snapshot::save(&src, &path, &SaveOptions::default(), &s.progress)
            .map_err(|e| format!("save: {e}"))?;
    }
    // The fleet's first restore (or `hostmem image verify`) checked the image and left
    // its stamp: these clones map it without reading it first (Verify::Once).
    let image = Image::open(&path).map_err(|e| format!("open: {e}"))?;
    match snapshot::verify_and_stamp(&image, 0, &s.progress).map_err(|e| format!("verify: {e}"))? {
        (_, snapshot::Stamped::Recorded(_)) => {}
        (_, other) => return Err(format!("no verified stamp: {other:?}")),
    }
    evict(&path)?;
    let fields = ["MemFree", "Cached", "AnonPages", "PageTables"];
    let before: Vec<Option<u64>> = fields.iter().map(|f| meminfo(f)).collect();
    let started = Instant::now();
    let mut children = (0..n)
        .map(|i| spawn(&path, pct, i as u64 + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let ready = wait_ready(&mut children);
    let all_ready = started.elapsed().as_secs_f64();
    let after: Vec<Option<u64>> = fields.iter().map(|f| meminfo(f)).collect();
    let mut sums = [0u64; 3];
    if let Ok(ready) = &ready {
        for (c, r) in children.iter().zip(ready) {
            let pid = c.id().to_string();
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            sums[0] += kb_field(&rollup, "Pss").unwrap_or(0);
            sums[1] += smaps_field(&pid, r.addr, "Pss").unwrap_or(0);
            sums[2] += smaps_field(&pid, r.addr, "Private_Dirty").unwrap_or(0);
        }
    }
    for mut c in children {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&path);
    let ready = ready?;
    let sm = &mut s.run.samples;
    for (k, v) in ["pss", "pss-mapping", "private-dirty"].iter().zip(sums) {
        sm.push(format!("clones/{k}"), Some(v as f64));
    }
    for (f, (a, b)) in fields.iter().zip(before.iter().zip(&after)) {
        let d = a.zip(*b).map(|(a, b)| b as f64 - a as f64);
        sm.push(format!("clones/delta-{f}"), d);
    }
    let usable: Vec<f64> = ready.iter().map(|r| r.usable).collect();
    sm.push("clones/usable-median".into(), crate::stats::median(&usable));
    sm.push("clones/all-ready".into(), Some(all_ready));
    sm.push("clones/image".into(), Some(len as f64));
    Ok(())
}
