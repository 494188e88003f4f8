//! `hostmem image`: what a snapshot image holds (`info`) and whether every block still
//! matches its checksum (`verify`). The format is `docs/snapshot.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hostmem::size::format_size;
use hostmem::snapshot::{BlockKind, Image, SnapshotError};
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
    match image.verify(threads, &Progress::new()) {
        Ok(r) if json => {
            let v = json!({"schema-version": SCHEMA_VERSION, "ok": true,
                "image": file, "blocks": r.blocks, "data-blocks": r.data_blocks,
                "data-bytes": r.data_bytes, "unchecked-blocks": r.unchecked_blocks});
            (format!("{v:#}\n"), true)
        }
        Ok(r) => (
            format!(
                "{}: {} data blocks ({}) match their checksums; {} blocks in all\n",
                file.display(),
                r.data_blocks,
                format_size(r.data_bytes),
                r.blocks
            ),
            true,
        ),
        Err(e) => (failure(json, &e), false),
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
