//! `hostmem vm` against a real QEMU 10 (`-machine pc -accel tcg -S`): the report must
//! equal what this test reads itself from /proc/QEMU_PID/smaps and numa_maps over the
//! ranges QEMU's own `info ramblock` gives (through a second QMP monitor and a parser
//! of this file, not hostmem's). Then the faults: QEMU killed while watched, a backend
//! deleted while watched, a socket that is not QEMU's. Every JSON document these tests
//! get (the report, --watch lines, a rebind outcome) is also validated against
//! docs/vm.schema.json (tests/common/schema.rs).
//!
//! Needs root (huge pages for the hugetlb backend: the pool is raised for the test and
//! put back by a guard) and qemu-system-x86_64; fails loudly without them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// `pub`: this crate uses only part of the shared helpers; exported ones are not "unused".
pub mod common;

use common::held::Held;
use common::kernel::{read_range, Kernel};
use common::qmp::{ramblocks, Qmp};
use common::schema::{assert_valid, validate};

const HOSTMEM: &str = env!("CARGO_BIN_EXE_hostmem");
const MIB: u64 = 1 << 20;
/// The whole schema: a document must match exactly one of the three below.
const ANY: &str = "urn:hostmem:vm:1";
const REPORT: &str = "urn:hostmem:vm:1#/$defs/report";
const WATCH_REPORT: &str = "urn:hostmem:vm:1#/$defs/watch-report";
const REBIND: &str = "urn:hostmem:vm:1#/$defs/rebind";

/// Raises the 2 MiB huge page pool by `pages` and puts the old size back on drop
/// (also when a test panics).
struct HugePool {
    old: String,
}

const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

impl HugePool {
    fn raise(pages: u64) -> HugePool {
        let old = std::fs::read_to_string(NR_HUGEPAGES)
            .expect("reading nr_hugepages (2 MiB huge pages needed)")
            .trim()
            .to_string();
        let want = old.parse::<u64>().unwrap() + pages;
        std::fs::write(NR_HUGEPAGES, want.to_string())
            .expect("raising nr_hugepages: this test must run as root");
        let got: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let guard = HugePool { old };
        assert_eq!(got, want, "the kernel made only {got} huge pages");
        guard
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.old);
    }
}

/// The same fields from hostmem's JSON for one backend.
fn reported(b: &Value) -> Kernel {
    let k = &b["kernel"];
    Kernel {
        resident: k["resident-bytes"].as_u64().unwrap(),
        thp: k["thp-bytes"].as_u64().unwrap(),
        hugetlb: k["hugetlb-bytes"].as_u64().unwrap(),
        vmflags: serde_json::from_value(k["vmflags"].clone()).unwrap(),
        pages_per_node: serde_json::from_value(k["pages-per-node"].clone()).unwrap(),
        policy: k["numa-maps-policy"].as_str().unwrap().to_string(),
    }
}

/// One QEMU at a time: each takes 32 huge pages from a pool it raises and puts back.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A QEMU with one backend of each kind and two QMP monitors (hostmem's and ours).
/// Dropped: QEMU killed, then the huge page pool put back, then the lock released.
struct Qemu {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    ours: PathBuf,
    _pool: HugePool,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Qemu {
    fn start(tag: &str) -> Qemu {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let pool = HugePool::raise(32);
        let dir = PathBuf::from(format!(
            "/dev/shm/hostmem-vm-test-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("hostmem.qmp");
        let ours = dir.join("test.qmp");
        let file = Qemu::file_backend(&dir);
        let objects = [
            "memory-backend-ram,id=ram,size=64M,dump=off".to_string(),
            "memory-backend-ram,id=ram-pre,size=64M,prealloc=on,policy=bind,host-nodes=0".into(),
            "memory-backend-ram,id=ram-thp,size=64M,prealloc=on".into(),
            "memory-backend-memfd,id=memfd,size=64M".into(),
            format!(
                "memory-backend-file,id=file,size=64M,mem-path={},share=on,prealloc=on,policy=bind,host-nodes=0",
                file.display()
            ),
            "memory-backend-memfd,id=huge,size=64M,hugetlb=on,hugetlbsize=2M,prealloc=on".into(),
            "memory-backend-ram,id=spare,size=32M".into(),
        ];
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-m",
            "384M",
        ]);
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", ours.display()));
        for o in &objects {
            cmd.arg("-object").arg(o);
        }
        for id in ["ram", "ram-pre", "ram-thp", "memfd", "file", "huge"] {
            cmd.arg("-numa").arg(format!("node,memdev={id}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 must be installed (apt-get install qemu-system-x86)");
        let q = Qemu {
            child,
            dir,
            sock,
            ours,
            _pool: pool,
            _turn: turn,
        };
        let t = Instant::now();
        while !(q.sock.exists() && q.ours.exists()) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "QEMU made no QMP sockets"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        q
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file behind the `file` backend (in `dir`, on /dev/shm: shmem).
    fn file_backend(dir: &Path) -> PathBuf {
        dir.join("file-backend")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hostmem(args: &[&str]) -> Command {
    let mut c = Command::new(HOSTMEM);
    c.args(args).stdin(Stdio::null());
    c
}

/// `hostmem vm --json --watch 0.2` on `qemu`'s socket: the process (stderr piped) and
/// its report lines.
fn watch_json(qemu: &Qemu) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut w = hostmem(&[
        "vm",
        "--qmp",
        qemu.sock.to_str().unwrap(),
        "--json",
        "--watch",
        "0.2",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = BufReader::new(w.stdout.take().unwrap()).lines();
    (w, lines)
}

/// Runs hostmem to its end, requires success and gives its stdout.
fn hostmem_ok(args: &[&str]) -> String {
    let out = hostmem(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits for `child` at most `limit`; kills it and fails when it hangs.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("hostmem did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn report_of_each_backend_equals_the_kernels_files() {
    let qemu = Qemu::start("report");
    let mut q = Qmp::connect(&qemu.ours);
    let text = hostmem_ok(&["vm", "--qmp", qemu.sock.to_str().unwrap(), "--json"]);
    // Every kind of backend, an unattached one (null ramblock and kernel) and an
    // unnamed block: the schema sees each shape the report has.
    assert_valid(&text, REPORT);
    assert_valid(&text, ANY);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["schema-version"],
        json!(hostmem_cli::report::SCHEMA_VERSION)
    );
    assert_eq!(doc["qemu"]["pid"], json!(qemu.pid()));
    assert!(doc["qemu"]["version"].as_str().unwrap().starts_with("10."));
    let blocks = ramblocks(&mut q);
    let backends = doc["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 7, "{doc}");
    for b in backends {
        let id = b["id"].as_str().unwrap();
        if id == "spare" {
            assert_eq!(b["attached"], json!(false), "{b}");
            assert_eq!(b["kernel"], Value::Null);
            continue;
        }
        let block = blocks.iter().find(|k| k.name == id).unwrap();
        assert_eq!(b["ramblock"]["host-addr"], json!(block.hva), "{id}");
        assert_eq!(b["ramblock"]["length"], json!(block.used), "{id}");
        let mine = read_range(qemu.pid(), block.hva, block.used);
        assert_eq!(
            reported(b),
            mine,
            "{id}: hostmem's report vs the kernel's files"
        );
        // And the kernel's files say what each kind should look like.
        match id {
            "ram" | "memfd" => assert_eq!(mine.resident, 0, "{id}: nothing touched"),
            "ram-pre" => {
                assert_eq!(mine.resident, 64 * MIB);
                assert_eq!(mine.policy, "bind:0");
            }
            "ram-thp" => assert!(mine.thp > 0, "THP (madvise) expected: {mine:?}"),
            "file" => {
                assert_eq!(mine.resident, 64 * MIB);
                assert!(mine.vmflags.contains(&"sh".to_string()));
            }
            "huge" => {
                assert_eq!(mine.hugetlb, 64 * MIB);
                assert!(mine.vmflags.contains(&"ht".to_string()));
            }
            _ => panic!("unexpected backend {id}"),
        }
    }
    // The spare backend's block exists, without a name.
    assert!(blocks
        .iter()
        .any(|b| b.name.is_empty() && b.used == 32 * MIB));
    assert_eq!(doc["unnamed-ramblocks"][0]["length"], json!(32 * MIB));
    // The schema is not vacuous: the kernel object, checked through report.schema.json's
    // `$defs/kernel`, refuses a size that is not a number.
    let mut broken = doc.clone();
    broken["backends"][0]["kernel"]["resident-bytes"] = json!("64M");
    let e = validate(&broken.to_string(), REPORT).unwrap_err();
    assert!(e.contains("'64M' is not of type 'integer'"), "{e}");
}

/// What a rebind can show on a one-node host: the refusal's wording, and that pages
/// already on the target node are counted placed, not moved. Pages really moving, and
/// a refusal leaving every page where it was, need other nodes: the NUMA guest checks
/// them (tests/numa-vm/suite/src/vm.rs), the move pass's choices are unit-tested with
/// a fake kernel (hostmem's remote/pass.rs).
#[test]
fn rebind_to_the_node_every_page_is_on_counts_none_moved_and_refuses_a_missing_node() {
    let qemu = Qemu::start("rebind");
    let mut q = Qmp::connect(&qemu.ours);
    let sock = qemu.sock.to_str().unwrap();
    let block = ramblocks(&mut q)
        .into_iter()
        .find(|b| b.name == "ram-pre")
        .unwrap();
    let before = read_range(qemu.pid(), block.hva, block.used);
    let out = hostmem(&["vm", "--qmp", sock, "rebind", "ram-pre", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused before moving any page: node 7 does not exist"),
        "{err}"
    );

    let text = hostmem_ok(&["vm", "--qmp", sock, "--json", "rebind", "ram-pre", "0"]);
    assert_valid(&text, REBIND);
    assert_valid(&text, ANY);
    let r: Value = serde_json::from_str(&text).unwrap();
    // ram-pre is bound to node 0 and preallocated: every page is on node 0 already.
    let on0 = before.pages_per_node["0"];
    assert_eq!(
        on0 * 4096,
        block.used,
        "all of ram-pre on node 0: {before:?}"
    );
    assert_eq!(r["moved"], json!(0), "pages already on node 0 moved: {r}");
    assert_eq!(r["already-placed"], json!(on0), "placed vs numa_maps: {r}");
    assert_eq!(
        r["resident-pages"],
        json!(on0),
        "resident vs numa_maps: {r}"
    );
    assert_eq!(r["policy-after"], json!("bind:0"));
    assert_eq!(r["pages-per-node-after"]["0"], json!(on0));
    let mut broken = r.clone();
    broken["moved-by-magic"] = json!(1);
    let e = validate(&broken.to_string(), REBIND).unwrap_err();
    assert!(e.contains("'moved-by-magic' was unexpected"), "{e}");
}

#[test]
fn qemu_killed_while_watched_ends_the_watch_with_a_clear_error() {
    let mut qemu = Qemu::start("kill");
    let (mut w, mut lines) = watch_json(&qemu);
    let line = lines.next().unwrap().unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["backends"].as_array().unwrap().len(), 7);
    // Killed right after the first line, while the watch sleeps between looks: the
    // schema checks below come after, so they do not move the kill into a QMP exchange.
    let pid = qemu.pid();
    qemu.kill();
    let status = wait_bounded(&mut w, Duration::from_secs(20));
    let err = stderr_of(&mut w);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("QEMU (pid {pid}) exited")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_valid(&line, WATCH_REPORT);
    assert_valid(&line, ANY);
    // A watch line carries two members a single report has not.
    let e = validate(&line, REPORT).unwrap_err();
    assert!(e.contains("Unevaluated properties are not allowed"), "{e}");
}

#[test]
fn a_backend_deleted_while_watched_is_reported_gone_and_the_watch_goes_on() {
    let qemu = Qemu::start("del");
    let mut q = Qmp::connect(&qemu.ours);
    let (mut w, mut lines) = watch_json(&qemu);
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let first = next();
    assert!(first["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["id"] == "spare"));
    let r = q.cmd("object-del", json!({"id": "spare"}));
    assert_eq!(r["return"], json!({}), "{r}");
    // The deletion shows in a later report as "gone", once.
    let mut gone_seen = false;
    for _ in 0..20 {
        let d = next();
        let ids: Vec<&str> = d["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        if d["gone"] == json!(["spare"]) {
            assert_valid(&d.to_string(), WATCH_REPORT);
            assert!(!ids.contains(&"spare"));
            assert_eq!(ids.len(), 6);
            gone_seen = true;
            break;
        }
    }
    assert!(gone_seen, "no report said spare was gone");
    let after = next();
    assert_eq!(after["gone"], json!([]), "said once");
    assert!(w.try_wait().unwrap().is_none(), "the watch goes on");
    let _ = Command::new("kill")
        .args(["-INT", &w.id().to_string()])
        .status();
    let status = wait_bounded(&mut w, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut w));
}

#[test]
fn a_socket_that_is_not_qemus_is_named_so_without_hanging() {
    let dir = PathBuf::from(format!("/tmp/hostmem-vm-notqmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, says) in [("chatty", Some("hello, I am not QEMU\n")), ("mute", None)] {
        let path = dir.join(name);
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            if let Some(text) = says {
                s.write_all(text.as_bytes()).unwrap();
            }
            // Keep the connection open without ever speaking QMP.
            std::thread::sleep(Duration::from_secs(4));
        });
        let started = Instant::now();
        let mut c = hostmem(&["vm", "--qmp", path.to_str().unwrap(), "--timeout", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_bounded(&mut c, Duration::from_secs(10));
        let err = stderr_of(&mut c);
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{} is not a QMP socket", path.display())),
            "{name}: {err}"
        );
        if says.is_none() {
            assert!(err.contains("no greeting within 2 s"), "{err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name}: too slow"
        );
        server.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each backend's notes, by id, in `hostmem vm`'s JSON and in its text (the `note:`
/// lines under each backend's header); the two must agree.
fn notes_by_backend(sock: &str) -> BTreeMap<String, Vec<String>> {
    let doc: Value = serde_json::from_str(&hostmem_ok(&["vm", "--qmp", sock, "--json"])).unwrap();
    let json: BTreeMap<String, Vec<String>> = doc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let notes = serde_json::from_value(b["notes"].clone()).unwrap();
            (b["id"].as_str().unwrap().to_string(), notes)
        })
        .collect();
    let text = hostmem_ok(&["vm", "--qmp", sock]);
    let mut in_text: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut id = String::new();
    for line in text.lines().skip(1) {
        if let Some(note) = line.strip_prefix("    note: ") {
            in_text.get_mut(&id).unwrap().push(note.to_string());
        } else if !line.starts_with(' ') {
            id = line.split_whitespace().next().unwrap().to_string();
            in_text.entry(id.clone()).or_default();
        }
    }
    in_text.retain(|id, _| json.contains_key(id)); // the unnamed blocks' line
    assert_eq!(
        in_text, json,
        "notes in the text report vs the JSON:\n{text}"
    );
    json
}

#[test]
fn notes_appear_where_the_kernel_contradicts_qemu_and_nowhere_else() {
    let qemu = Qemu::start("notes");
    let sock = qemu.sock.to_str().unwrap();
    // As QEMU made them, the kernel agrees with every backend: ram's dump=off has dd,
    // ram-pre's and file's bind:0 are bind:0, merge=on has mg where KSM can merge
    // (private memory) and needs none where it cannot (share=on, hugetlb), and every
    // prealloc=on range is resident.
    let none: BTreeMap<String, Vec<String>> = [
        "file", "huge", "memfd", "ram", "ram-pre", "ram-thp", "spare",
    ]
    .iter()
    .map(|id| (id.to_string(), Vec::new()))
    .collect();
    assert_eq!(
        notes_by_backend(sock),
        none,
        "QEMU made every backend as asked"
    );

    // Another process changes what the kernel holds for the file backend: it punches
    // a hole in the file (4 MiB of the preallocated pages are gone) and maps the file
    // with policy interleave (a shmem file's policy is the file's, for every mapping).
    let file = Qemu::file_backend(&qemu.dir);
    let st = Command::new("fallocate")
        .args(["--punch-hole", "--offset", "0", "--length", "4MiB"])
        .arg(&file)
        .status()
        .expect("fallocate (util-linux) must be installed");
    assert!(st.success());
    let spec = format!(
        "memory-backend-file,id=other,size=64M,mem-path={},share=on,policy=interleave,host-nodes=0",
        file.display()
    );
    // Its report is printed once the file is mapped and its policy set.
    let other = Held::start(&["-object", &spec]);
    let got = notes_by_backend(sock);
    other.finish();
    let mut want = none;
    want.insert(
        "file".into(),
        vec![
            "prealloc=on, but only 60 MiB of 64 MiB is resident".into(),
            "QEMU was asked for policy bind:0, the kernel has interleave:0 for the range".into(),
        ],
    );
    assert_eq!(got, want, "notes after the file changed under QEMU");
}
