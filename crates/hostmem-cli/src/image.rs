//! `hostmem image`: what a snapshot image holds (`info`) and whether every block still
//! matches its checksum (`verify`); and `hostmem run --restore/--save`, which bring a
//! backend's memory back from an image and save it on exit. The format is
//! `docs/snapshot.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use hostmem::objects::Objects;
use hostmem::size::format_size;
use hostmem::snapshot::lazy::{chunks_path, ChunkSums};
use hostmem::snapshot::{self, BlockKind, Image, PrivateOptions, RestoreOptions, SaveOptions};
use hostmem::snapshot::{SnapshotError, Stamped, Verify};
use hostmem::Progress;
use serde_json::{json, Value};

use crate::report::SCHEMA_VERSION;

pub const EXAMPLES: &str = "Examples:
  hostmem image info mem.img            layout, regions, data and holes, a block map
  hostmem image info --json mem.img     the same as one JSON document
  hostmem image verify mem.img          read every data block and check its checksum;
                                        exit 1 naming the first bad block";

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// The image's header: backend, page and block size, regions, data and holes.
    Info {
        /// The image file.
        file: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read every data block and check its checksum (exit 1 naming the first bad one).
    Verify {
        /// The image file.
        file: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Threads reading the image (0: one per CPU).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

pub fn main(args: ImageArgs) -> ExitCode {
    let (text, ok) = match args.action {
        Action::Info { file, json } => match Image::open(&file) {
            Ok(image) if json => (format!("{:#}\n", info_json(&image)), true),
            Ok(image) => (info_text(&image), true),
            Err(e) => (failure(json, &e), false),
        },
        Action::Verify {
            file,
            json,
            threads,
        } => verify(&file, json, threads),
    };
    // Results on stdout, failures on stderr; a reader that goes away early
    // (`hostmem image info | head`) is not an error of ours.
    let printed = if ok {
        std::io::stdout().lock().write_all(text.as_bytes())
    } else {
        std::io::stderr().lock().write_all(text.as_bytes())
    };
    match printed {
        _ if !ok => ExitCode::from(1),
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

fn failure(json: bool, e: &SnapshotError) -> String {
    if json {
        let v = json!({"schema-version": SCHEMA_VERSION, "ok": false,
                       "error": e.to_string(), "block": e.block()});
        format!("{v:#}\n")
    } else {
        format!("hostmem: {e}\n")
    }
}

fn verify(file: &std::path::Path, json: bool, threads: usize) -> (String, bool) {
    let image = match Image::open(file) {
        Ok(i) => i,
        Err(e) => return (failure(json, &e), false),
    };
    // The chunk checksums beside the image (`FILE.chunks`, what a lazy restore serves
    // first touches by), when there are any: checked after the blocks they come from.
    let sidecar = chunks_path(file);
    let chunks = |image: &Image| -> Result<Option<u64>, SnapshotError> {
        if !sidecar.exists() {
            return Ok(None);
        }
        ChunkSums::load(&sidecar, image)?
            .verify(&sidecar, image)
            .map(Some)
    };
    match snapshot::verify_and_stamp(&image, threads, &Progress::new())
        .and_then(|(r, st)| Ok((r, st, chunks(&image)?)))
    {
        Ok((r, st, c)) if json => {
            let (stamp, stamp_error) = match &st {
                Stamped::Recorded(p) => (Some(p.display().to_string()), None),
                Stamped::NotWritten(_, e) => (None, Some(e.to_string())),
                _ => (None, Some("the file changed while it was read".to_string())),
            };
            let v = json!({"schema-version": SCHEMA_VERSION, "ok": true,
                "image": file, "blocks": r.blocks, "data-blocks": r.data_blocks,
                "data-bytes": r.data_bytes, "unchecked-blocks": r.unchecked_blocks,
                "chunk-sums": c, "stamp": stamp, "stamp-error": stamp_error});
            (format!("{v:#}\n"), true)
        }
        Ok((r, st, c)) => (
            format!(
                "{}: {} data blocks ({}) match their checksums; {} blocks in all{}\n{}\n",
                file.display(),
                r.data_blocks,
                format_size(r.data_bytes),
                r.blocks,
                c.map_or(String::new(), |n| format!(
                    "; {n} chunk checksums in {} match",
                    sidecar.display()
                )),
                stamp_line(&st)
            ),
            true,
        ),
        Err(e) => (failure(json, &e), false),
    }
}

/// What `image verify` says about the stamp it left (or could not).
fn stamp_line(st: &Stamped) -> String {
    match st {
        Stamped::Recorded(p) => format!(
            "verified stamp written to {}: private restores skip the check while the file is unchanged",
            p.display()
        ),
        Stamped::NotWritten(p, e) => format!(
            "no verified stamp ({}: {e}): every private restore checks the image",
            p.display()
        ),
        _ => "no verified stamp: the file changed while it was read".to_string(),
    }
}

/// Whether a block's bytes are in this file.
fn is_data(b: &BlockKind) -> bool {
    matches!(b, BlockKind::Data { .. } | BlockKind::Unchecked)
}

fn count(image: &Image, pick: impl Fn(&BlockKind) -> bool) -> usize {
    image.blocks().iter().filter(|b| pick(b)).count()
}

/// Runs of equal kind over the block table: (first, last, is data).
fn runs(image: &Image) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (i, b) in image.blocks().iter().enumerate() {
        let data = is_data(b);
        match out.last_mut() {
            Some(last) if last.2 == data && last.1 + 1 == i as u64 => last.1 = i as u64,
            _ => out.push((i as u64, i as u64, data)),
        }
    }
    out
}

fn info_json(image: &Image) -> Value {
    let data_ranges: Vec<Value> = runs(image)
        .into_iter()
        .filter(|r| r.2)
        .map(|(a, b, _)| json!([a, b]))
        .collect();
    let data = image.data_bytes();
    json!({
        "schema-version": SCHEMA_VERSION,
        "image": image.path(),
        "header": image.header().to_json(),
        "data-blocks": count(image, is_data),
        "data-bytes": data,
        "base-blocks": count(image, |b| *b == BlockKind::Base),
        "hole-blocks": count(image, |b| *b == BlockKind::Hole),
        "data-block-ranges": data_ranges,
    })
}

/// One character per block (`#` data, `=` left to a diff's base, `.` hole), 64 to a
/// line; past 4096 blocks each character stands for several (the first of `#`, `=`
/// that any of them is).
fn block_map(image: &Image) -> String {
    let n = image.blocks().len();
    let per = n.div_ceil(4096).max(1);
    let chars: Vec<char> = image
        .blocks()
        .chunks(per)
        .map(|c| {
            if c.iter().any(is_data) {
                '#'
            } else if c.contains(&BlockKind::Base) {
                '='
            } else {
                '.'
            }
        })
        .collect();
    let mut out = String::new();
    for line in chars.chunks(64) {
        out.push_str("  ");
        out.extend(line);
        out.push('\n');
    }
    if per > 1 {
        out.push_str(&format!("  (one character per {per} blocks)\n"));
    }
    out
}

fn info_text(image: &Image) -> String {
    let h = image.header();
    let data = image.data_bytes();
    let data_blocks = count(image, is_data);
    let base_blocks = count(image, |b| *b == BlockKind::Base);
    let mut s = format!(
        "{}: hostmem image v{}, xxh3-64 checksums\n",
        image.path().display(),
        h.version
    );
    s += &format!(
        "backend: {} '{}', {}, page size {}\n",
        h.kind.as_deref().unwrap_or("?"),
        h.id.as_deref().unwrap_or("?"),
        format_size(h.backend_len),
        format_size(h.page_size)
    );
    s += &format!(
        "blocks: {} of {}: {} data ({}), {} holes",
        h.blocks,
        format_size(h.block_size),
        data_blocks,
        format_size(data),
        h.blocks as usize - data_blocks - base_blocks,
    );
    s += &match h.base {
        Some(base) => format!(", {base_blocks} in the base (a diff on image {base:#018x})\n"),
        None => format!(" ({})\n", format_size(h.memory_len() - data)),
    };
    // A diff's table (v2) lists only the blocks it holds; a full image's, every block.
    let (how, listed) = match h.version {
        snapshot::VERSION_SPARSE => ("sparse", ", the blocks not in the base"),
        _ => ("dense", ""),
    };
    s += &format!(
        "table: {} {how} entries ({}){listed}\n",
        h.entries,
        format_size(h.table_len())
    );
    s += "regions:\n";
    for (i, r) in h.regions.iter().enumerate() {
        s += &format!(
            "  {i}: backend {:#x} + {} at file offset {:#x}, blocks {}-{}\n",
            r.backend_offset,
            format_size(r.len),
            r.file_offset,
            r.first_block,
            r.first_block + r.len.div_ceil(h.block_size) - 1
        );
    }
    s += "block map (# data, . hole, = in the base):\n";
    s += &block_map(image);
    s
}

/// How `hostmem run --restore` brings an image back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreMode {
    /// Copied into the backend an `-object` made (placed and limited like prealloc).
    Copy,
    /// The backend is made from the image: the file mapped privately (copy on write).
    Private,
    /// Served by userfaultfd into the `-object`'s memory: usable at once, filled in the
    /// background (`crate::lazy`).
    Lazy,
}

/// `--restore ID=FILE[,diff=FILE]...[,mode=copy|private|lazy][,verify=always|once|never]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSpec {
    pub id: String,
    pub file: PathBuf,
    /// Diff images over `file`, oldest first: the chain restored as one.
    pub diffs: Vec<PathBuf>,
    pub mode: RestoreMode,
    /// When a private restore checks the image (default once per file version).
    pub verify: Verify,
}

/// `--save ID=FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveSpec {
    pub id: String,
    pub file: PathBuf,
}

fn id_and_file(text: &str) -> Result<(String, &str), String> {
    match text.split_once('=') {
        Some((id, rest)) if !id.is_empty() && !rest.is_empty() => Ok((id.to_string(), rest)),
        _ => Err(format!("'{text}': expected ID=FILE")),
    }
}

/// Parses `ID=FILE[,diff=FILE]...[,mode=copy|private|lazy][,verify=always|once|never]`
/// (clap's value parser for `--restore`). A file name with a comma is taken whole unless
/// what follows its last commas is `diff=...`, `mode=...` or `verify=...`.
pub fn parse_restore(text: &str) -> Result<RestoreSpec, String> {
    const MODES: &[(&str, RestoreMode)] = &[
        ("copy", RestoreMode::Copy),
        ("private", RestoreMode::Private),
        ("lazy", RestoreMode::Lazy),
    ];
    const VERIFY: &[(&str, Verify)] = &[
        ("always", Verify::Always),
        ("once", Verify::Once),
        ("never", Verify::Never),
    ];
    let (id, mut rest) = id_and_file(text)?;
    let (mut mode, mut verify) = (None, None);
    let mut diffs = Vec::new();
    while let Some((head, tail)) = rest.rsplit_once(',') {
        if let Some(d) = tail.strip_prefix("diff=") {
            if d.is_empty() {
                return Err("diff=: expected diff=FILE".into());
            }
            diffs.push(PathBuf::from(d));
        } else if let Some(m) = tail.strip_prefix("mode=").filter(|_| mode.is_none()) {
            mode = Some(choice("mode", m, MODES)?);
        } else if let Some(v) = tail.strip_prefix("verify=").filter(|_| verify.is_none()) {
            verify = Some(choice("verify", v, VERIFY)?);
        } else {
            break;
        }
        rest = head;
    }
    let mode = mode.unwrap_or(RestoreMode::Copy);
    if verify.is_some() && mode != RestoreMode::Private {
        return Err(
            "verify= applies to mode=private (copy and lazy restores check every block they read)"
                .into(),
        );
    }
    if !diffs.is_empty() && mode == RestoreMode::Private {
        return Err(
            "diff= with mode=private: a chain of images cannot be mapped as one file; \
             restore it by copy or lazily"
                .into(),
        );
    }
    // Read from the right: put back in the order given.
    diffs.reverse();
    Ok(RestoreSpec {
        id,
        file: rest.into(),
        diffs,
        mode,
        verify: verify.unwrap_or_default(),
    })
}

/// The value of `key=value` among `choices`, or an error listing them.
fn choice<T: Copy>(key: &str, value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*t);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let (last, head) = names.split_last().unwrap_or((&"", &[]));
    Err(format!(
        "{key}={value}: expected {key}={} or {last}",
        head.join(", ")
    ))
}

/// Parses `ID=FILE` (clap's value parser for `--save`).
pub fn parse_save(text: &str) -> Result<SaveSpec, String> {
    let (id, file) = id_and_file(text)?;
    Ok(SaveSpec {
        id,
        file: file.into(),
    })
}

/// `hostmem run --restore`: each image into its backend (copy: the `-object` of that id
/// must exist; private: the id must be new, the backend is made from the image), with
/// a line on stderr saying how long until the memory was usable (from opening the image
/// to the last byte copied, or to the private mapping made, checksums verified, or to
/// the lazy restore serving). The lazy restores still filling are returned, to be
/// finished on exit.
pub fn restore_all(
    specs: &[RestoreSpec],
    objects: &mut Objects,
    progress: &Progress,
) -> Result<Vec<crate::lazy::Lazy>, String> {
    let mut lazy = Vec::new();
    for s in specs {
        let what = format!("--restore {}={}", s.id, s.file.display());
        let started = Instant::now();
        let image = Image::open(&s.file).map_err(|e| format!("{what}: {e}"))?;
        let diffs = s
            .diffs
            .iter()
            .map(|d| Image::open(d).map_err(|e| format!("{what}: diff {}: {e}", d.display())))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = image.data_bytes() + diffs.iter().map(Image::data_bytes).sum::<u64>();
        match s.mode {
            RestoreMode::Copy => {
                let b = objects
                    .backend(&s.id)
                    .ok_or_else(|| format!("{what}: no -object with id '{}'", s.id))?;
                let opts = RestoreOptions::default();
                let done = if diffs.is_empty() {
                    snapshot::restore(&image, b, &opts, progress)
                } else {
                    let chain: Vec<&Image> = std::iter::once(&image).chain(&diffs).collect();
                    snapshot::restore_chain(&chain, b, &opts, progress)
                };
                done.map_err(|e| format!("{what}: {e}"))?;
            }
            RestoreMode::Private => {
                let opts = PrivateOptions { verify: s.verify };
                let b = snapshot::restore_private(&image, &s.id, &opts)
                    .map_err(|e| format!("{what}: {e}"))?;
                objects.add_backend(b).map_err(|e| format!("{what}: {e}"))?;
            }
            RestoreMode::Lazy => {
                let b = objects
                    .backend(&s.id)
                    .ok_or_else(|| format!("{what}: no -object with id '{}'", s.id))?;
                let l = crate::lazy::start(&s.id, &s.file, image, diffs, b)
                    .map_err(|e| format!("{what}: {e}"))?;
                lazy.push(l);
            }
        }
        eprintln!(
            "hostmem: restored '{}' from {}{} ({}, {} of data): usable after {:.1} ms",
            s.id,
            s.file.display(),
            match s.diffs.len() {
                0 => String::new(),
                n => format!(" and {n} diff(s)"),
            },
            match s.mode {
                RestoreMode::Copy => "copy",
                RestoreMode::Private => "private",
                RestoreMode::Lazy => "lazy",
            },
            format_size(bytes),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(lazy)
}

/// `hostmem run --save`: each backend to its image, after the report and the hold; the
/// errors, one per failed save.
pub fn save_all(specs: &[SaveSpec], objects: &Objects, progress: &Progress) -> Vec<String> {
    let mut errors = Vec::new();
    for s in specs {
        let what = format!("--save {}={}", s.id, s.file.display());
        let Some(b) = objects.backend(&s.id) else {
            errors.push(format!("{what}: no backend with id '{}'", s.id));
            continue;
        };
        match snapshot::save(b, &s.file, &SaveOptions::default(), progress) {
            Ok(r) => eprintln!(
                "hostmem: saved '{}' to {} ({} of data in {} blocks) in {:.1} ms",
                s.id,
                s.file.display(),
                format_size(r.data_bytes),
                r.data_blocks,
                r.secs * 1e3
            ),
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_and_save_specs() {
        let r = parse_restore("m0=/x/a,b.img,mode=private").unwrap();
        assert_eq!(
            (r.id.as_str(), r.file.to_str(), r.mode),
            ("m0", Some("/x/a,b.img"), RestoreMode::Private)
        );
        assert_eq!(parse_restore("m0=a.img").unwrap().mode, RestoreMode::Copy);
        assert_eq!(
            parse_restore("m0=a.img,mode=lazy").unwrap().mode,
            RestoreMode::Lazy
        );
        assert!(parse_restore("m0=a.img,mode=later")
            .unwrap_err()
            .contains("mode=later"));
        let r = parse_restore("m0=a,b.img,verify=never,mode=private").unwrap();
        assert_eq!(
            (r.file.to_str(), r.mode, r.verify),
            (Some("a,b.img"), RestoreMode::Private, Verify::Never)
        );
        // What follows the last comma is no key: the whole value is one file name.
        let r = parse_restore("m0=base.img,diff=d1.img,2").unwrap();
        assert_eq!(
            (r.file.to_str(), r.diffs.len()),
            (Some("base.img,diff=d1.img,2"), 0)
        );
        let r = parse_restore("m0=base.img,diff=d1.img,diff=d2.img,mode=copy").unwrap();
        let diffs: Vec<_> = r.diffs.iter().filter_map(|d| d.to_str()).collect();
        assert_eq!(
            (r.file.to_str(), diffs),
            (Some("base.img"), vec!["d1.img", "d2.img"])
        );
        assert!(parse_restore("m0=b.img,diff=d.img,mode=private")
            .unwrap_err()
            .contains("cannot be mapped"));
        assert!(parse_restore("m0=b.img,diff=")
            .unwrap_err()
            .contains("diff=FILE"));
        let r = parse_restore("m0=a.img,mode=private,verify=always").unwrap();
        assert_eq!(r.verify, Verify::Always);
        assert_eq!(
            parse_restore("m0=a.img,mode=private").unwrap().verify,
            Verify::Once
        );
        assert!(parse_restore("m0=a.img,verify=never")
            .unwrap_err()
            .contains("mode=private"));
        assert!(parse_restore("m0=a.img,mode=private,verify=sometimes")
            .unwrap_err()
            .contains("verify=sometimes"));
        assert!(parse_restore("a.img").is_err());
        assert!(parse_save("=a.img").is_err());
        assert_eq!(parse_save("m=a").unwrap().file, PathBuf::from("a"));
    }
}
