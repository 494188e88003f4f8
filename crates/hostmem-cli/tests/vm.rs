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
use std::io::{BufRead, BufReader, Lines, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// `pub`: this crate uses only part of the shared helpers; exported ones are not "unused".
pub mod common;

use common::held::Held;
use common::kernel::{read_range, Kernel};
use common::schema::{assert_valid, validate};
use hostmem_testkit as testkit;
use testkit::pool::{Pool, PoolGuard, HUGE_2M};
use testkit::qemu::{qmp_arg, stopped_pc};
use testkit::qmp::{ramblocks, Qmp};
use testkit::spawn::{command, output_ok, stderr_of, wait_bounded};

const HOSTMEM: &str = env!("CARGO_BIN_EXE_hostmem");
const MIB: u64 = 1 << 20;
/// How long the test's own QMP client waits for a reply.
const QMP_WAIT: Duration = Duration::from_secs(20);
/// The whole schema: a document must match exactly one of the three below.
const ANY: &str = "urn:hostmem:vm:1";
const REPORT: &str = "urn:hostmem:vm:1#/$defs/report";
const WATCH_REPORT: &str = "urn:hostmem:vm:1#/$defs/watch-report";
const REBIND: &str = "urn:hostmem:vm:1#/$defs/rebind";

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
    child: testkit::qemu::Qemu,
    dir: PathBuf,
    sock: PathBuf,
    ours: PathBuf,
    _pool: PoolGuard,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Qemu {
    fn start(tag: &str) -> Qemu {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let mut pool = PoolGuard::new();
        pool.raise(Pool::host(HUGE_2M), 32)
            .expect("raising the 2 MiB huge page pool: this test must run as root");
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
        let mut cmd = stopped_pc("qemu-system-x86_64", 384);
        cmd.arg("-qmp").arg(qmp_arg(&sock));
        cmd.arg("-qmp").arg(qmp_arg(&ours));
        for o in &objects {
            cmd.arg("-object").arg(o);
        }
        for id in ["ram", "ram-pre", "ram-thp", "memfd", "file", "huge"] {
            cmd.arg("-numa").arg(format!("node,memdev={id}"));
        }
        let sockets = [sock.clone(), ours.clone()];
        let child = testkit::qemu::Qemu::spawn(cmd, &sockets, Duration::from_secs(30)).unwrap();
        Qemu {
            child,
            dir,
            sock,
            ours,
            _pool: pool,
            _turn: turn,
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The file behind the `file` backend (in `dir`, on /dev/shm: shmem).
    fn file_backend(dir: &Path) -> PathBuf {
        dir.join("file-backend")
    }

    fn kill(&mut self) {
        self.child.kill();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hostmem(args: &[&str]) -> Command {
    command(HOSTMEM, args)
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
    output_ok(&mut hostmem(args)).unwrap()
}

#[test]
fn report_of_each_backend_equals_the_kernels_files() {
    let qemu = Qemu::start("report");
    let mut q = Qmp::connect(&qemu.ours, QMP_WAIT).unwrap();
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
    let blocks = ramblocks(&mut q).unwrap();
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
    let mut q = Qmp::connect(&qemu.ours, QMP_WAIT).unwrap();
    let sock = qemu.sock.to_str().unwrap();
    let block = ramblocks(&mut q)
        .unwrap()
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
    let status = wait_bounded(&mut w, Duration::from_secs(20)).unwrap();
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
    let mut q = Qmp::connect(&qemu.ours, QMP_WAIT).unwrap();
    let (mut w, mut lines) = watch_json(&qemu);
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let first = next();
    assert!(first["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["id"] == "spare"));
    let r = q.cmd("object-del", json!({"id": "spare"})).unwrap();
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
    let status = wait_bounded(&mut w, Duration::from_secs(20)).unwrap();
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
        let status = wait_bounded(&mut c, Duration::from_secs(10)).unwrap();
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
