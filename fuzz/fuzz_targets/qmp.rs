//! QMP request handling in process: any bytes a client could send go through the
//! monitor's framer and command dispatch ([`Monitor`], the path every socket
//! connection takes), and every reply is a well-formed QMP reply, never a panic.
//!
//! The first byte chooses how the rest is cut into reads (as a socket would deliver
//! it) and whether capabilities are negotiated first. The monitor is bounded by its
//! [`Limits`] (not by filtering input): backends of at most 2 MiB, file backends only
//! in a scratch directory that is emptied after every input.
#![no_main]

use std::path::Path;

use hostmem::MachineDefaults;
use hostmem_cli::qmp::{Limits, Monitor};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SCRATCH: &str = "/tmp/hostmem-fuzz-qmp";
const CLASSES: &[&str] = &["GenericError", "CommandNotFound", "DeviceNotFound"];

fn check(reply: &Value) {
    let obj = reply.as_object().expect("a reply is a JSON object");
    for k in obj.keys() {
        assert!(
            ["return", "error", "id"].contains(&k.as_str()),
            "member {k}: {reply}"
        );
    }
    match (obj.get("return"), obj.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            let class = e["class"].as_str().expect("error class");
            assert!(CLASSES.contains(&class), "{reply}");
            let desc = e["desc"].as_str().expect("error desc");
            assert!(!desc.is_empty(), "{reply}");
            // What `answer` makes of a panic in a command (with the fuzzer's panic
            // hook the process aborts before that; without it, this catches it).
            assert!(
                !(desc.starts_with("internal error in ") && desc.ends_with("part of its effect")),
                "a command panicked: {reply}"
            );
        }
        _ => panic!("neither return nor error: {reply}"),
    }
}

fn empty_scratch(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let dir = Path::new(SCRATCH);
    let _ = std::fs::create_dir_all(dir);
    let limits = Limits {
        max_backend_size: Some(2 << 20),
        mem_path_under: Some(dir.to_path_buf()),
    };
    let mut monitor = Monitor::new(Vec::new(), MachineDefaults::default(), limits);
    if mode & 0x80 != 0 {
        let r = monitor.feed(b"{\"execute\": \"qmp_capabilities\"}");
        assert_eq!(r.len(), 1);
        check(&r[0]);
    }
    let cut = match (mode & 0x7f) as usize {
        0 => data.len().max(1),
        n => n,
    };
    for chunk in data.chunks(cut) {
        for reply in monitor.feed(chunk) {
            check(&reply);
        }
    }
    drop(monitor);
    empty_scratch(dir);
});
