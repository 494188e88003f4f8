//! `hostmem run` as a process: its report checked against the kernel's view of that
//! process (/proc/PID/smaps, numa_maps), its errors, and its clean exit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

// `pub`: this crate uses only part of the shared helpers; exported ones are not "unused".
pub mod common;

use common::held::Held;

const BIN: &str = env!("CARGO_BIN_EXE_hostmem");
const MIB: u64 = 1 << 20;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("run").args(args).output().unwrap()
}

#[test]
fn json_report_agrees_with_the_kernel_view_of_the_holding_process() {
    let held = Held::start(&[
        "-object",
        "memory-backend-ram,id=a,size=64M,prealloc=on,policy=bind,host-nodes=0",
        "--object",
        "memory-backend-memfd,id=b,size=32M,merge=off",
    ]);
    let doc = &held.report;
    let backends = doc["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    let a = &backends[0];
    for key in [
        "id",
        "qom-type",
        "size",
        "host-addr",
        "page-size",
        "policy",
        "host-nodes",
        "merge",
        "dump",
        "prealloc",
        "share",
        "kernel",
        "prealloc-seconds",
    ] {
        assert!(!a[key].is_null(), "key {key} in {a}");
    }
    assert_eq!(a["qom-type"], "memory-backend-ram");
    assert_eq!(a["policy"], "bind");
    assert_eq!(a["host-nodes"], serde_json::json!([0]));
    let k = held.kernel("a", 64 * MIB);
    assert_eq!(
        k.resident,
        64 * MIB,
        "the holding process really has 64 MiB resident"
    );
    assert_eq!(a["kernel"]["resident-bytes"].as_u64(), Some(k.resident));
    let reported: BTreeMap<String, u64> =
        serde_json::from_value(a["kernel"]["pages-per-node"].clone()).unwrap();
    assert_eq!(
        reported, k.pages_per_node,
        "pages per node as numa_maps shows them"
    );
    let b = &backends[1];
    assert_eq!(b["share"], true);
    assert_eq!(b["prealloc-seconds"], serde_json::Value::Null);
    let k = held.kernel("b", 32 * MIB);
    assert!(k.has_flag("sh"), "a memfd is shared: {:?}", k.vmflags);
    let vmflags: Vec<String> = serde_json::from_value(b["kernel"]["vmflags"].clone()).unwrap();
    assert_eq!(vmflags, k.vmflags, "VmFlags as smaps shows them");
    held.finish();
}

#[test]
fn sigterm_ends_a_hold_cleanly() {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--hold",
            "-object",
            "memory-backend-ram,id=a,size=8M",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    let _ = child.stdin.take().map(|mut s| s.write_all(b""));
}

#[test]
fn a_bad_spec_is_one_line_on_stderr_and_exit_1() {
    let spec = "memory-backend-ram,id=m,size=1M,policy=bind";
    let o = run(&[
        "-object",
        "memory-backend-ram,id=ok,size=1M",
        "-object",
        spec,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(
        err,
        format!("hostmem: -object {spec}: host-nodes must be set for policy bind\n")
    );
    assert!(o.stdout.is_empty(), "no report for a failed run");

    let o = run(&["-object", "memory-backend-ram,id=m,size=lots"]);
    assert_eq!(String::from_utf8(o.stderr).unwrap(), "hostmem: -object memory-backend-ram,id=m,size=lots: Parameter 'size' expects a size value\n");
    let o = run(&[
        "-object",
        "memory-backend-ram,id=m,size=1M",
        "-object",
        "memory-backend-ram,id=m,size=1M",
    ]);
    // QEMU's option lists catch a keyval id given twice, in these words.
    assert_eq!(
        String::from_utf8(o.stderr).unwrap(),
        "hostmem: -object memory-backend-ram,id=m,size=1M: Duplicate ID 'm' for object\n"
    );
    let o = run(&["-machine", "mem-merge=perhaps"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_failed_allocation_leaves_no_file_behind() {
    let dir = std::env::temp_dir().join(format!("hostmem-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ram");
    // The file is created, then growing it to a petabyte fails.
    let spec = format!(
        "memory-backend-file,id=f,size=1P,mem-path={},reserve=off",
        path.display()
    );
    let o = run(&["-object", &spec]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8(o.stderr)
        .unwrap()
        .starts_with(&format!("hostmem: -object {spec}: memory-backend-file 'f'")));
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn default_run_preallocates_a_ram_backend_and_draws_node_bars() {
    let o = Command::new(BIN).arg("run").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.starts_with("ram0  memory-backend-ram"), "{text}");
    assert!(text.contains("node 0   [####"), "{text}");
    assert!(text.contains("prealloc "), "{text}");
}

/// -machine's mem-merge and dump-guest-core and -mem-prealloc are the defaults of a
/// backend that says nothing itself: smaps of the holding process shows no mg, dd and
/// the whole range resident. A backend that overrides each shows the opposite in the
/// same process, so each flag is one this kernel sets and the machine options made
/// the difference.
#[test]
fn machine_defaults_reach_the_kernel() {
    let held = Held::start(&[
        "-machine",
        "mem-merge=off,dump-guest-core=off",
        "-mem-prealloc",
        "-object",
        "memory-backend-ram,id=m,size=4M",
        "-object",
        "memory-backend-ram,id=own,size=4M,merge=on,dump=on,prealloc=off",
    ]);
    let m = held.kernel("m", 4 * MIB);
    let own = held.kernel("own", 4 * MIB);
    held.finish();
    assert!(!m.has_flag("mg"), "mem-merge=off: no mg in {:?}", m.vmflags);
    assert!(
        m.has_flag("dd"),
        "dump-guest-core=off: dd in {:?}",
        m.vmflags
    );
    assert_eq!(m.resident, 4 * MIB, "-mem-prealloc: all of it resident");
    assert!(own.has_flag("mg"), "merge=on: mg in {:?}", own.vmflags);
    assert!(!own.has_flag("dd"), "dump=on: no dd in {:?}", own.vmflags);
    assert_eq!(own.resident, 0, "prealloc=off: nothing resident");
}

#[test]
fn host_json_describes_this_host() {
    let o = Command::new(BIN).args(["host", "--json"]).output().unwrap();
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc["online-nodes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(0)));
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
    assert!(thp.contains(&format!("[{}]", doc["thp"]["enabled"].as_str().unwrap())));
}

/// `hostmem host` reports kernel features as probed; each one is checked here against
/// what the kernel does for a real `hostmem run`, and against sysfs.
#[test]
fn host_features_agree_with_what_the_kernel_does() {
    let o = Command::new(BIN).args(["host", "--json"]).output().unwrap();
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &doc["features"];
    // Weighted interleave's weights: the sysfs directory, present or not.
    let dir = std::path::Path::new("/sys/kernel/mm/mempolicy/weighted_interleave");
    assert_eq!(f["weighted-interleave-weights"], dir.is_dir(), "{f}");
    // MADV_POPULATE_WRITE: a shared memfd can only be preallocated with it (touching
    // shared memory could raise SIGBUS, so there is no fallback); smaps of the holding
    // process shows whether its pages came in.
    let populate = f["madv-populate-write"].as_bool().unwrap();
    assert!(populate, "Linux 5.14+ has MADV_POPULATE_WRITE: {f}");
    let held = Held::start(&["-object", "memory-backend-memfd,id=m,size=8M,prealloc=on"]);
    assert_eq!(
        held.kernel("m", 8 * MIB).resident,
        8 * MIB,
        "memfd preallocated"
    );
    held.finish();
    // Each policy: where the probe read a mode back, a backend with the policy is made
    // and numa_maps of the holding process shows that mode; where mbind refused it, the
    // run fails.
    let modes = f["mempolicy-modes"].as_object().unwrap();
    assert_eq!(modes.len(), 7, "{f}");
    assert_eq!(
        f["mpol-preferred-many"],
        !modes["preferred-many"].is_null(),
        "{f}"
    );
    assert_eq!(
        f["mpol-weighted-interleave"],
        !modes["weighted-interleave"].is_null(),
        "{f}"
    );
    let spec = |i: usize, policy: &str| {
        let nodes = if matches!(policy, "default" | "local") {
            ""
        } else {
            ",host-nodes=0"
        };
        format!("memory-backend-ram,id=p{i},size=2M,prealloc=on,policy={policy}{nodes}")
    };
    let mut args: Vec<String> = Vec::new();
    let mut want = Vec::new();
    for (i, (policy, mode)) in modes.iter().enumerate() {
        match mode.as_str() {
            Some(mode) => {
                args.push("-object".into());
                args.push(spec(i, policy));
                want.push((format!("p{i}"), policy.clone(), mode.to_string()));
            }
            None => {
                let o = run(&["-object", &spec(i, policy)]);
                assert!(!o.status.success(), "{policy} was refused by the probe");
            }
        }
    }
    assert_eq!(want.len(), 7, "Linux 6.9+ accepts every policy: {f}");
    let held = Held::start(&args);
    let numa = std::fs::read_to_string(format!("/proc/{}/numa_maps", held.pid())).unwrap();
    for (id, policy, mode) in want {
        let b = held.report["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id.as_str())
            .unwrap();
        let addr = b["host-addr"].as_u64().unwrap();
        let l = numa
            .lines()
            .find(|l| l.starts_with(&format!("{addr:x} ")))
            .unwrap_or_else(|| panic!("no numa_maps line at {addr:x}"));
        let kernel = l.split_once(' ').unwrap().1;
        assert!(
            kernel == mode
                || kernel.starts_with(&format!("{mode}:"))
                || kernel.starts_with(&format!("{mode} ")),
            "policy {policy}: the probe read back {mode:?}, numa_maps says {l:?}"
        );
    }
    held.finish();
}

#[test]
fn sigint_during_a_multi_gib_prealloc_exits_within_a_second_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("hostmem-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("guest.ram");
    let child = Command::new(BIN)
        .args([
            "run",
            "-object",
            "memory-backend-ram,id=big,size=8G,prealloc=on",
        ])
        .args([
            "-object",
            &format!(
                "memory-backend-file,id=f,size=64M,mem-path={},share=on,prealloc=on",
                file.display()
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the prealloc is under way: the process has grown past 256 MiB.
    let status = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    loop {
        let rss_kb = std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        if rss_kb > 256 * 1024 {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "prealloc never got going");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(file.exists(), "the file backend made its file");
    let sent = std::time::Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    assert!(took.as_secs_f64() < 1.0, "exit took {took:?}");
    assert_eq!(out.status.code(), Some(130), "128 + SIGINT");
    assert!(out.stdout.is_empty(), "no report for an interrupted run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(!file.exists(), "created file removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A libvirt-style line: JSON objects, a thread-context named by the backend's
/// prealloc-context (given after it, as QEMU allows: contexts are made first). The
/// held process's smaps shows the memory resident, and the context thread exists in
/// /proc/PID/task with the affinity it was given.
#[test]
fn libvirt_style_json_objects_with_a_thread_context() {
    let held = Held::start(&[
        "-object",
        r#"{"qom-type":"memory-backend-ram","id":"ram-node0","size":33554432,"prealloc":true,"prealloc-context":"tc-ram-node0","x-use-canonical-path-for-ramblock-id":false}"#,
        "-object",
        r#"{"qom-type":"thread-context","id":"tc-ram-node0","cpu-affinity":[0]}"#,
    ]);
    let doc = &held.report;
    let b = &doc["backends"][0];
    assert_eq!(b["prealloc-context"], "/objects/tc-ram-node0");
    assert_eq!(held.kernel("ram-node0", 32 * MIB).resident, 32 * MIB);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", held.pid())).unwrap();
    let tc = tasks
        .filter_map(|t| {
            let p = t.unwrap().path();
            let comm = std::fs::read_to_string(p.join("comm")).ok()?;
            comm.starts_with("TC tc-ram-node0").then_some(p)
        })
        .next()
        .expect("a context thread named like QEMU's");
    let status = std::fs::read_to_string(tc.join("status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.replace('\t', " ") == "Cpus_allowed_list: 0"),
        "{status}"
    );
    held.finish();
}

#[test]
fn a_prealloc_context_that_names_no_object_is_qemus_error() {
    let out = run(&[
        "-object",
        r#"{"qom-type":"memory-backend-ram","id":"m","size":4096,"prealloc-context":"tcX"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim_end().ends_with(": Device 'tcX' not found"),
        "{err}"
    );
}

/// `--check` names every reason a backend would fail without allocating, in the words
/// a real run of the same line then fails with.
#[test]
fn check_predicts_what_a_real_run_then_does() {
    let spec = "memory-backend-ram,id=x,size=1M,policy=bind,host-nodes=5";
    let check = run(&["--check", "-object", spec]);
    assert_eq!(check.status.code(), Some(1));
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("x  memory-backend-ram") && out.contains("WOULD FAIL"),
        "{out}"
    );
    let real = run(&["-object", spec]);
    assert_eq!(real.status.code(), Some(1));
    let real_err = String::from_utf8_lossy(&real.stderr);
    let reason = real_err
        .trim_end()
        .rsplit(": host-nodes = ")
        .next()
        .unwrap();
    assert!(reason.contains("node 5 does not exist"), "{real_err}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(reason),
        "check: {} / run: {real_err}",
        String::from_utf8_lossy(&check.stderr)
    );
    let ok = run(&[
        "--check",
        "--",
        "qemu-system-x86_64",
        "-m",
        "64M",
        "-nodefaults",
    ]);
    assert!(ok.status.success());
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.starts_with("pc.ram  memory-backend-ram  needs 64 MiB") && out.contains("fits"),
        "{out}"
    );
}

/// A libvirt `.args` file (environment, `\` continuations, quoted JSON, devices):
/// the backends QEMU would make are made and reported; the rest is listed as ignored.
#[test]
fn a_libvirt_args_file_runs_its_memory_part() {
    let path = std::env::temp_dir().join(format!("hostmem-args-{}", std::process::id()));
    std::fs::write(
        &path,
        "LC_ALL=C \\\nPATH=/bin \\\n/usr/bin/qemu-system-x86_64 \\\n-name guest=vm1,debug-threads=on \\\n-machine pc-q35-10.0,usb=off,dump-guest-core=off \\\n-m size=65536k \\\n-object '{\"qom-type\":\"thread-context\",\"id\":\"tc-ram-node0\",\"node-affinity\":[0]}' \\\n-object '{\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node0\",\"size\":33554432,\"prealloc\":true,\"prealloc-context\":\"tc-ram-node0\"}' \\\n-numa node,nodeid=0,cpus=0,memdev=ram-node0 \\\n-object '{\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node1\",\"size\":33554432}' \\\n-numa node,nodeid=1,cpus=1,memdev=ram-node1 \\\n-device '{\"driver\":\"virtio-balloon-pci\",\"id\":\"balloon0\"}'\n",
    )
    .unwrap();
    let held = Held::start(&["--qemu-cmdline", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let ids: Vec<&str> = held.report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ram-node0", "ram-node1"]);
    let k = held.kernel("ram-node0", 32 * MIB);
    let err = held.finish();
    assert_eq!(k.resident, 32 * MIB, "prealloc: all of it resident");
    assert!(
        k.has_flag("dd"),
        "dump-guest-core=off: dd in {:?}",
        k.vmflags
    );
    assert!(
        err.contains("3 memory objects") && err.contains("-name") && err.contains("-device"),
        "{err}"
    );
}
