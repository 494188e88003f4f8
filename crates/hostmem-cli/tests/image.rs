//! `hostmem image info|verify` on images the library saved: the layout the file has,
//! and exit 1 naming the block whose byte the test flipped.

use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

use hostmem::snapshot::{self, Image, SaveOptions};
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
    assert!(text.contains("hostmem image v1,"), "{text}");
    assert!(text.contains("table: 8 dense entries (128 B)\n"), "{text}");

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
    // The stamp that lets private restores skip the check, naming this very file.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified stamp written to"), "{text}");
    assert!(snapshot::is_stamped(&Image::open(&path).unwrap()));

    // Flip one byte of block 5's data, found by its bytes in the file.
    let data = std::fs::read(&path).unwrap();
    let at = data.windows(64).position(|w| w == &bytes[..64]).unwrap() + 100;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[data[at] ^ 1], at as u64).unwrap();

    // The write moved the file's ctime: the stamp no longer matches it.
    assert!(!snapshot::is_stamped(&Image::open(&path).unwrap()));
    let out = hostmem(&["image", "verify", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 5 (backend offset 0xa00000, page 2560): checksum mismatch"),
        "{err}"
    );
    assert!(
        !snapshot::stamp_path(&path).exists(),
        "a bad image kept its stamp"
    );
    let out = hostmem(&["image", "verify", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["block"].clone()),
        (false.into(), 5.into())
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn image_verify_checks_the_chunk_sums_beside_the_image_and_names_a_wrong_one() {
    use hostmem::snapshot::lazy::{chunks_path, ChunkSums};
    let (path, _) = image("verify-chunks");
    let p = path.to_str().unwrap();
    let out = hostmem(&["image", "verify", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Blocks 1 and 5, 512 chunks of 4 KiB each.
    assert!(text.contains("; 1024 chunk checksums in"), "{text}");

    // One sum changed (the file otherwise well formed): the image's bytes are right,
    // the sidecar is wrong, and verify says which chunk.
    let image = Image::open(&path).unwrap();
    let sidecar = chunks_path(&path);
    let mut sums = ChunkSums::load(&sidecar, &image).unwrap();
    sums.blocks.get_mut(&5).unwrap()[7] ^= 1;
    sums.save(&sidecar, &image).unwrap();
    let out = hostmem(&["image", "verify", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("block 5, chunk 7"), "{err}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A fresh directory under /tmp for one test.
fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hostmem-run-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `hostmem run` that must succeed; its stderr.
fn run_ok(args: &[&str]) -> String {
    let out = hostmem(&[&["run"], args].concat());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "hostmem run {args:?}: {err}");
    err
}

/// The milliseconds of the `usable after N ms` line for `id`.
fn usable_ms(stderr: &str, id: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("restored '{id}'")))
        .unwrap_or_else(|| panic!("no restore line for {id}: {stderr}"));
    let ms = line.rsplit("usable after ").next().unwrap();
    ms.trim_end_matches(" ms").parse().expect(line)
}

/// A 16 MiB file holding the test's bytes in blocks 1 and 5, zeros elsewhere; the
/// whole expected content.
fn source_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut want = vec![0u8; (16 * MIB) as usize];
    want[(2 * MIB) as usize..(4 * MIB) as usize].copy_from_slice(&noise(11));
    want[(10 * MIB) as usize..(12 * MIB) as usize].copy_from_slice(&noise(12));
    let path = dir.join("source.mem");
    std::fs::write(&path, &want).unwrap();
    (path, want)
}

fn file_object(id: &str, path: &std::path::Path) -> String {
    format!(
        "memory-backend-file,id={id},size=16M,share=on,mem-path={}",
        path.display()
    )
}

#[test]
fn run_save_then_run_restore_brings_the_bytes_back() {
    let dir = scratch("copy");
    let (source, want) = source_file(&dir);
    let img = dir.join("m.img");
    let img = img.to_str().unwrap();
    // Run 1: the memory is the test's file (shared); saved on exit.
    run_ok(&[
        "--object",
        &file_object("m", &source),
        "--save",
        &format!("m={img}"),
    ]);
    // Run 2: an empty shared file, restored by copy: the file gets the bytes.
    let target = dir.join("target.mem");
    let err = run_ok(&[
        "--object",
        &file_object("m", &target),
        "--restore",
        &format!("m={img},mode=copy"),
    ]);
    assert!(usable_ms(&err, "m") >= 0.0);
    let got = std::fs::read(&target).unwrap();
    assert!(
        got == want,
        "the restored file differs from the saved bytes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_restore_lazy_fills_the_backend_and_keeps_the_touch_order() {
    let dir = scratch("lazy");
    let (source, want) = source_file(&dir);
    let img = dir.join("m.img");
    run_ok(&[
        "--object",
        &file_object("m", &source),
        "--save",
        &format!("m={}", img.display()),
    ]);
    // userfaultfd serves shmem: the target file is on /dev/shm (tmpfs).
    let target =
        std::path::PathBuf::from(format!("/dev/shm/hostmem-cli-lazy-{}", std::process::id()));
    let err = run_ok(&[
        "--object",
        &file_object("m", &target),
        "--restore",
        &format!("m={},mode=lazy", img.display()),
    ]);
    let got = std::fs::read(&target).unwrap();
    assert!(usable_ms(&err, "m") >= 0.0);
    assert!(err.contains("lazy fill of 'm' done"), "{err}");
    assert!(
        got == want,
        "the lazily restored file differs from the saved bytes"
    );
    let order = std::fs::read(dir.join("m.img.order")).unwrap();
    assert_eq!(&order[..8], b"HOSTMEMO", "no touch order beside the image");
    let chunks = std::fs::read(dir.join("m.img.chunks")).unwrap();
    assert_eq!(
        &chunks[..8],
        b"HOSTMEMC",
        "no chunk checksums beside the image"
    );

    // One flipped byte in block 5 (backend 10 MiB): exit 1 naming the block, in time.
    let data = std::fs::read(&img).unwrap();
    let at = data
        .windows(64)
        .position(|w| w == &want[(10 * MIB) as usize..(10 * MIB) as usize + 64])
        .unwrap() as u64
        + MIB;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[data[at as usize] ^ 1], at).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hostmem"))
        .args(["run", "--object", &file_object("m", &target)])
        .args(["--restore", &format!("m={},mode=lazy", img.display())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("hostmem run --restore of a flipped image did not end within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_file(&target);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 5 ") && err.contains("checksum mismatch"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_restore_private_maps_the_image_and_saves_its_bytes() {
    let dir = scratch("private");
    let (source, want) = source_file(&dir);
    let img = dir.join("m.img");
    let again = dir.join("again.img");
    run_ok(&[
        "--object",
        &file_object("m", &source),
        "--save",
        &format!("m={}", img.display()),
    ]);
    // Run 2: no -object: the backend is the image mapped privately; saved again.
    let err = run_ok(&[
        "--json",
        "--restore",
        &format!("p={},mode=private", img.display()),
        "--save",
        &format!("p={}", again.display()),
    ]);
    assert!(usable_ms(&err, "p") >= 0.0);
    // Run 3: the second image copied into a shared file the test reads.
    let target = dir.join("target.mem");
    run_ok(&[
        "--object",
        &file_object("p", &target),
        "--restore",
        &format!("p={}", again.display()),
    ]);
    let got = std::fs::read(&target).unwrap();
    assert!(got == want, "bytes through a private restore differ");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_restore_of_a_missing_backend_fails_naming_it() {
    let dir = scratch("missing");
    let (source, _) = source_file(&dir);
    let img = dir.join("m.img");
    run_ok(&[
        "--object",
        &file_object("m", &source),
        "--save",
        &format!("m={}", img.display()),
    ]);
    let out = hostmem(&[
        "run",
        "--object",
        &file_object("other", &dir.join("t.mem")),
        "--restore",
        &format!("m={}", img.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no -object with id 'm'"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A diff over the image at `base_path` (saved by [`image`]) with 4 KiB blocks holding
/// pages 3 and 2600 (bits 3 and 2600 of a 4 KiB-page bitmap), written with the first
/// and second 4 KiB of the returned noise, saved as `dir/diff.img`.
fn diff_of_two_pages(
    base_path: &std::path::Path,
    dir: &std::path::Path,
) -> (std::path::PathBuf, Vec<u8>) {
    let base = Image::open(base_path).unwrap();
    let b = Backend::builder(Kind::Memfd, "guest")
        .size(16 * MIB)
        .create()
        .unwrap();
    let page = noise(9);
    let hold = b.hold().unwrap();
    hold.write_at(3 * 4096, &page[..4096]).unwrap();
    hold.write_at(2600 * 4096, &page[4096..8192]).unwrap();
    let mut bits = vec![0u64; 16 * MIB as usize / 4096 / 64];
    bits[0] |= 1 << 3;
    bits[2600 / 64] |= 1 << (2600 % 64);
    let dirty = snapshot::Dirty {
        page_size: 4096,
        bits: &bits,
    };
    let diff_path = dir.join("diff.img");
    snapshot::save_diff(&b, &base, &dirty, &diff_path, &Progress::new()).unwrap();
    (diff_path, page)
}

#[test]
fn image_info_and_verify_read_a_diff_with_smaller_blocks_than_its_base() {
    let (base_path, _) = image("diff-4k");
    let dir = base_path.parent().unwrap().to_path_buf();
    let (diff_path, page) = diff_of_two_pages(&base_path, &dir);
    let p = diff_path.to_str().unwrap();

    let out = hostmem(&["image", "info", p]);
    let text = stdout_of_success(&out);
    assert!(
        text.contains("blocks: 4096 of 4 KiB: 2 data (8 KiB), 0 holes, 4094 in the base"),
        "{text}"
    );
    // Format v2: the table lists the 2 blocks the diff holds, 24 bytes each.
    assert!(text.contains("hostmem image v2,"), "{text}");
    assert!(
        text.contains("table: 2 sparse entries (48 B), the blocks not in the base\n"),
        "{text}"
    );
    let out = hostmem(&["image", "info", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["header"]["version"], &v["header"]["table"]),
        (&serde_json::json!(2), &serde_json::json!("sparse"))
    );
    assert_eq!(v["header"]["entries"], 2);
    assert_eq!(v["base-blocks"], 4094);
    let out = hostmem(&["image", "verify", p]);
    let text = stdout_of_success(&out);
    assert!(text.contains("2 data blocks (8 KiB) match"), "{text}");

    // Page 2600's bytes flipped in the file: verify names its 4 KiB block.
    let data = std::fs::read(&diff_path).unwrap();
    let at = data
        .windows(64)
        .position(|w| w == &page[4096..4160])
        .unwrap()
        + 10;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&diff_path)
        .unwrap();
    f.write_all_at(&[data[at] ^ 1], at as u64).unwrap();
    let out = hostmem(&["image", "verify", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 2600 (backend offset 0xa28000, page 2600): checksum mismatch"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a command that must succeed printed (its stderr in the panic if it failed).
fn stdout_of_success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--restore m=BASE,diff=DIFF`: the chain restored by copy into the `-object`'s file
/// gives the base's bytes with the diff's pages over them, as the test wrote them; the
/// diff given first is refused naming it, before anything is written.
#[test]
fn run_restore_of_a_base_and_its_diff_brings_the_newest_bytes_back() {
    let (base_path, block5) = image("chain");
    let dir = base_path.parent().unwrap().to_path_buf();
    let (diff_path, page) = diff_of_two_pages(&base_path, &dir);

    let mut want = vec![0u8; (16 * MIB) as usize];
    want[(2 * MIB) as usize..(4 * MIB) as usize].copy_from_slice(&noise(1));
    want[(10 * MIB) as usize..(12 * MIB) as usize].copy_from_slice(&block5);
    want[3 * 4096..4 * 4096].copy_from_slice(&page[..4096]);
    want[2600 * 4096..2601 * 4096].copy_from_slice(&page[4096..8192]);
    let (base_s, diff_s) = (base_path.display(), diff_path.display());
    let target = dir.join("target.mem");
    let err = run_ok(&[
        "--object",
        &file_object("m", &target),
        "--restore",
        &format!("m={base_s},diff={diff_s}"),
    ]);
    assert!(err.contains("and 1 diff(s)"), "{err}");
    assert!(
        std::fs::read(&target).unwrap() == want,
        "the restored file differs from base + diff"
    );

    let other = dir.join("other.mem");
    let out = hostmem(&[
        "run",
        "--object",
        &file_object("m", &other),
        "--restore",
        &format!("m={diff_s},diff={base_s}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a chain starting with a diff ran: {err}"
    );
    assert!(
        err.contains(&format!("{diff_s} starts the chain but is a diff")),
        "{err}"
    );
    let written = std::fs::read(&other).unwrap_or_default();
    assert!(written.iter().all(|&x| x == 0), "bytes reached the memory");

    // The same chain lazily into a memfd, saved on exit (after the fill), then that
    // image restored by copy into a file: the same bytes. A chain's touch order is no
    // base's: none is written beside the base.
    let out = dir.join("out.img");
    let err = run_ok(&[
        "--object",
        "memory-backend-memfd,id=m,size=16M",
        "--restore",
        &format!("m={base_s},diff={diff_s},mode=lazy"),
        "--save",
        &format!("m={}", out.display()),
    ]);
    assert!(err.contains("and 1 diff(s) (lazy"), "{err}");
    let order = snapshot::lazy::order_path(&base_path);
    assert!(
        !order.exists(),
        "{} was written for a chain",
        order.display()
    );
    let again = dir.join("again.mem");
    run_ok(&[
        "--object",
        &file_object("m", &again),
        "--restore",
        &format!("m={}", out.display()),
    ]);
    assert!(
        std::fs::read(&again).unwrap() == want,
        "the lazily restored chain differs from base + diff"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
