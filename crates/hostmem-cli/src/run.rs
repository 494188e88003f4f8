//! `hostmem run`: create backends from `-object` specs, preallocate them together,
//! report what the kernel says, and optionally hold them (and serve QMP).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hostmem::objects::Objects;
use hostmem::objspec::ObjectType;
use hostmem::props::parse_bool;
use hostmem::{Backend, HostTopology, MachineDefaults, ObjectSpec, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::signals::{self, Stop};
use crate::{cmdline, image, qmp, report};

/// The distinct words of `names`, first seen first.
fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n);
        }
    }
    out
}

/// `--check`: the pre-flight verdict of every backend, nothing allocated.
fn check(objects: &Objects, specs: &[&String], json: bool) -> ExitCode {
    let refs: Vec<&Backend> = objects.backends().collect();
    let verdicts = hostmem::preflight::check(&refs, &HostTopology::read());
    let mut out = std::io::stdout().lock();
    let printed = if json {
        let doc = report::document(verdicts.iter().map(report::check_json).collect());
        writeln!(out, "{doc}")
    } else {
        write!(
            out,
            "{}",
            verdicts.iter().map(report::check_text).collect::<String>()
        )
    };
    if printed.and_then(|_| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    let failing: Vec<String> = verdicts
        .iter()
        .zip(specs)
        .filter(|(v, _)| !v.fits())
        .map(|(v, s)| {
            format!(
                "hostmem: -object {s}: would fail: {}",
                v.problems.join("; ")
            )
        })
        .collect();
    for f in &failing {
        eprintln!("{f}");
    }
    for (v, s) in verdicts.iter().zip(specs) {
        for w in &v.warnings {
            eprintln!("hostmem: warning: -object {s}: {w}");
        }
    }
    ExitCode::from(u8::from(!failing.is_empty()))
}

pub const EXAMPLES: &str = "Examples:
  hostmem run
      the built-in default: one 1 GiB memory-backend-ram, preallocated, reported
  hostmem run -object memory-backend-ram,id=ram0,size=4G,prealloc=on,prealloc-threads=2
  hostmem run -object memory-backend-ram,id=n0,size=1G,policy=bind,host-nodes=0,prealloc=on \\
              -object memory-backend-ram,id=n1,size=1G,policy=bind,host-nodes=1,prealloc=on
  hostmem run -object memory-backend-memfd,id=hp,size=2G,hugetlb=on,hugetlbsize=2M,prealloc=on --json
  hostmem run -object memory-backend-file,id=f,size=1G,mem-path=/dev/hugepages,share=on --hold
  hostmem run -machine mem-merge=off,dump-guest-core=off -mem-prealloc -object memory-backend-ram,id=m,size=512M
  hostmem run -object '{\"qom-type\":\"thread-context\",\"id\":\"tc0\",\"node-affinity\":[0]}' \\
              -object '{\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node0\",\"size\":1073741824,\"prealloc\":true,\"prealloc-context\":\"tc0\"}'";

#[derive(Args)]
pub struct RunArgs {
    /// A backend or thread-context in QEMU syntax: TYPE,id=ID,key=value,... or QEMU's
    /// JSON form {"qom-type":TYPE,"id":ID,...} as libvirt writes it (repeatable; also
    /// -object).
    #[arg(long = "object", value_name = "SPEC")]
    objects: Vec<String>,
    /// Machine-wide defaults: mem-merge=on|off,dump-guest-core=on|off (also -machine).
    #[arg(long, value_name = "OPTS")]
    machine: Option<String>,
    /// Preallocate every backend unless it says prealloc=off (also -mem-prealloc).
    #[arg(long)]
    mem_prealloc: bool,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Keep the backends until stdin reaches EOF or SIGINT/SIGTERM arrives.
    #[arg(long)]
    hold: bool,
    /// Serve QMP on a Unix socket (mode 0600) once the backends exist, until `quit`,
    /// SIGINT or SIGTERM: unix:PATH[,server=on][,wait=off] or PATH (also -qmp). With
    /// no -object, starts with no backends. See docs/qmp.md.
    #[arg(long, value_name = "SOCKET")]
    qmp: Option<String>,
    /// A whole QEMU command line in a file (libvirt's shell-quoted .args files, or one
    /// argument per line): its memory part (-object, -m, -mem-path, -mem-prealloc,
    /// -machine memory-backend=/mem-merge=/dump-guest-core=, -numa node,memdev=) makes
    /// the backends QEMU would; the rest is listed as ignored.
    #[arg(long, value_name = "FILE")]
    qemu_cmdline: Option<std::path::PathBuf>,
    /// Check only: would these backends come to life on this host, and where? Per
    /// backend the nodes it may use with their free memory and huge pages, and every
    /// reason it would fail; nothing is allocated. Exit 1 if any would fail.
    #[arg(long)]
    check: bool,
    /// Go ahead even where the memory limits say the memory is not there: no check of
    /// the bound nodes', the host's and the memory and hugetlb cgroups' room before
    /// mapping, no watch during prealloc (huge page pools are still checked). Applies
    /// to backends added over QMP too.
    #[arg(long)]
    ignore_memory_limits: bool,
    /// Restore a backend from a snapshot image once the backends exist, before the
    /// report: ID=FILE[,diff=FILE]...[,mode=copy|private|lazy][,verify=always|once|never]
    /// (repeatable). diff=: diff images over FILE, oldest first, restored with it as one
    /// chain (copy or lazy). copy: into the -object of that id; private: a new backend ID mapping the image
    /// copy-on-write, its checksums checked once per file version by default (the stamp
    /// FILE.verified; verify=always checks every time, never not at all); lazy: into the
    /// -object by userfaultfd, usable at once, filled in the background (the fill waited
    /// for on exit, the touch order kept in FILE.order). Prints the time to usable memory
    /// and the fill on stderr. See docs/snapshot.md.
    #[arg(long = "restore", value_name = "ID=FILE[,mode=M]", value_parser = image::parse_restore)]
    restore: Vec<image::RestoreSpec>,
    /// Save a backend's memory to a snapshot image on exit, after the report and the
    /// hold: ID=FILE (repeatable; not with --qmp).
    #[arg(long = "save", value_name = "ID=FILE", value_parser = image::parse_save)]
    save: Vec<image::SaveSpec>,
    /// A QEMU command line after `--`: `hostmem run -- qemu-system-x86_64 -m 4G ...`.
    #[arg(last = true, value_name = "QEMU ARGS")]
    qemu: Vec<String>,
}

fn fail(context: &str, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hostmem: {context}: {msg}");
    ExitCode::from(1)
}

/// Parses `-machine` text: the keys hostmem understands, other keys refused by name.
fn machine_defaults(text: Option<&str>, mem_prealloc: bool) -> Result<MachineDefaults, String> {
    let mut d = MachineDefaults {
        prealloc: mem_prealloc,
        ..Default::default()
    };
    let Some(text) = text else { return Ok(d) };
    for (i, item) in text.split(',').enumerate() {
        let (k, v) = match item.split_once('=') {
            Some(kv) => kv,
            // QEMU's machine type may lead (`none,mem-merge=off`); it means nothing here.
            None if i == 0 => continue,
            None => return Err(format!("Expected '=' after parameter '{item}'")),
        };
        let flag = || parse_bool(v).ok_or_else(|| format!("Parameter '{k}' expects 'on' or 'off'"));
        match k {
            "mem-merge" => d.merge = flag()?,
            "dump-guest-core" => d.dump = flag()?,
            "type" => {}
            _ => {
                return Err(format!(
                    "Parameter '{k}' is not one hostmem takes (mem-merge, dump-guest-core)"
                ))
            }
        }
    }
    Ok(d)
}

/// The main job on its own: 1 GiB of preallocated RAM, less on a host short of memory.
fn default_spec() -> String {
    const GIB: u64 = 1 << 30;
    let avail = HostTopology::mem_available().unwrap_or(2 * GIB);
    let size = (avail / 2).min(GIB) & !((2 << 20) - 1);
    format!(
        "memory-backend-ram,id=ram0,size={},prealloc=on",
        size.max(2 << 20)
    )
}

/// Creates all backends as one batch, with a progress bar on a terminal.
fn create(mut backends: Vec<&mut Backend>, progress: &Progress) -> Result<(), hostmem::BatchError> {
    let total: u64 = backends
        .iter()
        .filter(|b| b.config().common.prealloc)
        .map(|b| b.size())
        .sum();
    // The bar thread waits on this channel, so it ends the moment the batch does: a
    // plain 100 ms sleep kept every `hostmem run` of 1 GiB or more up to 100 ms longer.
    let (finished, tick) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        if total >= 1 << 30 && std::io::stderr().is_terminal() {
            s.spawn(move || {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("preallocating {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                while let Err(RecvTimeoutError::Timeout) =
                    tick.recv_timeout(Duration::from_millis(100))
                {
                    bar.set_position(progress.done());
                }
                bar.finish_and_clear();
            });
        }
        let r = Backend::complete_batch(&mut backends, progress);
        drop(finished);
        r
    })
}

/// The command line's objects, made by the library's container (which keeps the
/// rules: ids unique across objects, contexts made before the backends that link
/// them), and the `-object` text of each backend in order, for messages.
fn make_objects<'a>(
    specs: &'a [String],
    defaults: &MachineDefaults,
) -> Result<(Objects, Vec<&'a String>), ExitCode> {
    let mut parsed: Vec<(&String, ObjectSpec)> = Vec::with_capacity(specs.len());
    for spec in specs {
        // QEMU's option lists refuse a keyval id given twice before reading the rest
        // (help included).
        if let Some(id) = hostmem::objspec::keyval_id(spec) {
            if parsed
                .iter()
                .any(|(first, o)| !first.starts_with('{') && o.id == id)
            {
                return Err(fail(
                    &format!("-object {spec}"),
                    format!("Duplicate ID '{id}' for object"),
                ));
            }
        }
        // `TYPE,help` or `help`: QEMU lists the properties (or types) and exits 0.
        if let Some(text) = hostmem::objspec::help(spec) {
            print!("{text}");
            return Err(ExitCode::SUCCESS);
        }
        let s = ObjectSpec::parse(spec).map_err(|e| fail(&format!("-object {spec}"), e))?;
        for w in &s.warnings {
            eprintln!("hostmem: -object {spec}: warning: {w}");
        }
        parsed.push((spec, s));
    }
    // Other ids given twice (one of them JSON) collide only in the QOM tree, when the
    // objects are made: after every -object is read, as in QEMU (the container's
    // duplicate message).
    let mut objects = Objects::new();
    let mut backend_specs: Vec<&String> = Vec::with_capacity(specs.len());
    for (spec, s) in parsed {
        if s.ty != ObjectType::ThreadContext {
            backend_specs.push(spec);
        }
        objects
            .declare(s)
            .map_err(|e| fail(&format!("-object {spec}"), e))?;
    }
    objects
        .create(defaults)
        .map_err(|e| fail(&format!("-object {}", specs[e.index]), e))?;
    Ok((objects, backend_specs))
}

pub fn main(args: RunArgs) -> ExitCode {
    let defaults = match machine_defaults(args.machine.as_deref(), args.mem_prealloc) {
        Ok(d) => d,
        Err(e) => return fail(&format!("-machine {}", args.machine.unwrap_or_default()), e),
    };
    let qmp_path = match args.qmp.as_deref().map(qmp::parse_spec).transpose() {
        Ok(p) => p,
        Err(e) => return fail("-qmp", e),
    };
    if qmp_path.is_some() && !args.save.is_empty() {
        return fail(
            "--save",
            "not with --qmp: the monitor owns the backends until it stops",
        );
    }
    let qemu_line = match (&args.qemu_cmdline, args.qemu.is_empty()) {
        (Some(file), _) => match std::fs::read_to_string(file).map_err(|e| e.to_string()) {
            Ok(text) => match cmdline::split_file(&text) {
                Ok(words) => Some((file.display().to_string(), words)),
                Err(e) => return fail(&format!("--qemu-cmdline {}", file.display()), e),
            },
            Err(e) => return fail(&format!("--qemu-cmdline {}", file.display()), e),
        },
        (None, false) => Some(("the QEMU command line".to_string(), args.qemu.clone())),
        (None, true) => None,
    };
    let mut defaults = defaults;
    let mut specs = args.objects.clone();
    if let Some((what, words)) = qemu_line {
        match cmdline::memory_part(&words) {
            Ok(part) => {
                defaults = MachineDefaults {
                    prealloc: part.defaults.prealloc || defaults.prealloc,
                    ..part.defaults
                };
                let names: Vec<&str> = part
                    .ignored
                    .iter()
                    .map(|i| i.split(' ').next().unwrap_or(""))
                    .collect();
                eprintln!(
                    "hostmem: {what}: {} memory objects; ignored {} other arguments{}{}",
                    part.objects.len(),
                    part.ignored.len(),
                    if names.is_empty() { "" } else { ": " },
                    dedup(&names).join(" ")
                );
                specs.extend(part.objects);
            }
            Err(e) => return fail(&what, e),
        }
    } else if specs.is_empty() && qmp_path.is_none() && args.restore.is_empty() {
        // A monitor starts empty like QEMU's `-machine none`; backends come over QMP.
        specs.push(default_spec());
    }
    defaults.ignore_memory_limits = args.ignore_memory_limits;
    let (mut objects, backend_specs) = match make_objects(&specs, &defaults) {
        Ok(made) => made,
        Err(status) => return status,
    };
    if args.check {
        return check(&objects, &backend_specs, args.json);
    }
    let progress = Arc::new(Progress::new());
    let events = match signals::install(progress.clone()) {
        Ok(e) => e,
        Err(e) => return fail("signals", e),
    };
    if let Err(e) = create(objects.backends_mut().collect(), &progress) {
        if let Ok(Stop::Signal(sig)) = events.rx.try_recv() {
            eprintln!("hostmem: interrupted by signal {sig}; nothing was left allocated");
            return ExitCode::from(Stop::Signal(sig).status());
        }
        return fail(&format!("-object {}", backend_specs[e.index]), e.error);
    }
    let lazy = match image::restore_all(&args.restore, &mut objects, &progress) {
        Ok(lazy) => lazy,
        Err(e) => {
            eprintln!("hostmem: {e}");
            objects.delete_all();
            return ExitCode::from(1);
        }
    };
    // What QEMU prints as warnings (a pmem=on file that is not on DAX, ...).
    for (b, spec) in objects.backends().zip(&backend_specs) {
        for n in b.notes() {
            eprintln!("hostmem: warning: -object {spec}: {n}");
        }
    }
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        let doc = report::document(objects.backends().map(report::backend_json).collect());
        writeln!(out, "{doc}")
    } else {
        objects
            .backends()
            .try_for_each(|b| write!(out, "{}", report::backend_text(b)))
    };
    if printed.and_then(|_| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    drop(out);
    let mut status = 0;
    if args.hold {
        signals::watch_stdin(events.tx.clone());
    }
    if let Some(path) = qmp_path {
        // Backends added over QMP get the same machine-wide defaults. The monitor owns
        // the objects from here and deletes the backends when it stops.
        match qmp::serve(&path, objects, defaults, &events) {
            Ok(not_deleted) => {
                for n in not_deleted {
                    eprintln!("hostmem: {n}");
                    status = 1;
                }
            }
            Err(e) => return fail("-qmp", e),
        }
        return ExitCode::from(status);
    }
    if args.hold {
        // Any stop (EOF, SIGINT, SIGTERM) ends the hold cleanly with status 0.
        let _ = events.rx.recv();
    }
    // A lazy restore ends before a save reads its memory: the fill waited for, the
    // touch order kept.
    for l in lazy {
        if let Err(e) = l.finish() {
            eprintln!("hostmem: {e}");
            status = 1;
        }
    }
    for e in image::save_all(&args.save, &objects, &progress) {
        eprintln!("hostmem: {e}");
        status = 1;
    }
    for e in objects.delete_all() {
        eprintln!("hostmem: {e}");
        status = 1;
    }
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_options() {
        let d = machine_defaults(Some("none,mem-merge=off,dump-guest-core=off"), true).unwrap();
        assert_eq!(
            d,
            MachineDefaults {
                merge: false,
                dump: false,
                prealloc: true,
                ..Default::default()
            }
        );
        assert!(machine_defaults(Some("mem-merge=maybe"), false)
            .unwrap_err()
            .contains("expects 'on' or 'off'"));
        assert!(machine_defaults(Some("accel=kvm"), false)
            .unwrap_err()
            .contains("'accel'"));
    }

    #[test]
    fn default_spec_is_a_preallocated_ram_backend() {
        let b = ObjectSpec::parse(&default_spec())
            .and_then(|s| s.to_backend(&MachineDefaults::default()))
            .unwrap();
        assert_eq!(b.kind(), hostmem::Kind::Ram);
        assert!(b.config().common.prealloc);
    }
}
