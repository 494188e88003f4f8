//! `hostmem image info|verify` on images the library saved: the layout the file has,
//! and exit 1 naming the block whose byte the test flipped.

use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

use hostmem::snapshot::{self, SaveOptions};
use hostmem::{Backend, Kind, Progress};

const MIB: u64 = 1 << 20;

fn hostmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hostmem"))
        .args(args)
        .output()
        .unwrap()
}

/// 2 MiB that do not repeat (an LCG's high bytes), different for each seed.
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..2 * MIB)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// A 16 MiB memfd with blocks 1 and 5 written, saved to a fresh directory; block 5's
/// bytes.
fn image(tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("hostmem-image-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mem.img");
    let b = Backend::builder(Kind::Memfd, "guest")
        .size(16 * MIB)
        .create()
        .unwrap();
    let bytes = noise(5);
    let hold = b.hold().unwrap();
    hold.write_at((2 * MIB) as usize, &noise(1)).unwrap();
    hold.write_at((10 * MIB) as usize, &bytes).unwrap();
    snapshot::save(&b, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    (path, bytes)
}

#[test]
fn image_info_shows_the_backend_the_data_blocks_and_the_holes() {
    let (path, _) = image("info");
    let out = hostmem(&["image", "info", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("memory-backend-memfd 'guest', 16 MiB"),
        "{text}"
    );
    assert!(
        text.contains("blocks: 8 of 2 MiB: 2 data (4 MiB), 6 holes (12 MiB)"),
        "{text}"
    );
    assert!(text.contains("  .#...#..\n"), "{text}");

    let out = hostmem(&["image", "info", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data-block-ranges"], serde_json::json!([[1, 1], [5, 5]]));
    assert_eq!(v["header"]["kind"], "memory-backend-memfd");
    assert_eq!(v["data-bytes"], 4 * MIB);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn image_verify_passes_a_good_image_and_names_the_first_bad_block() {
    let (path, bytes) = image("verify");
    let p = path.to_str().unwrap();
    let out = hostmem(&["image", "verify", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Flip one byte of block 5's data, found by its bytes in the file.
    let data = std::fs::read(&path).unwrap();
    let at = data.windows(64).position(|w| w == &bytes[..64]).unwrap() + 100;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[data[at] ^ 1], at as u64).unwrap();

    let out = hostmem(&["image", "verify", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 5 (backend offset 0xa00000, page 2560): checksum mismatch"),
        "{err}"
    );
    let out = hostmem(&["image", "verify", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["block"].clone()),
        (false.into(), 5.into())
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
