//! Handshakes Firecracker would never send: each refused with a line naming what is
//! wrong, the connection closed, and the handler still there for the next client.

use std::fs::File;
use std::os::fd::AsFd;

use serde_json::json;

use super::*;

fn region(base: u64, size: u64, offset: u64) -> serde_json::Value {
    json!({"base_host_virt_addr": base, "size": size, "offset": offset,
           "page_size": 4096, "page_size_kib": 4096})
}

#[test]
fn malformed_handshakes_are_refused_with_a_message_and_the_handler_serves_on() {
    let dir = scratch("refused");
    let mem = dir.join("mem");
    std::fs::write(&mem, vec![7u8; 64 << 10]).unwrap();
    let mut h = Handler::start(&dir, &mem, &["--handshake-timeout", "1"]);
    let null = File::open("/dev/null").unwrap();
    let good = json!([region(0x7f00_0000_0000, 8192, 0)]).to_string();
    let cases: Vec<(String, Vec<std::os::fd::BorrowedFd>, &str)> = vec![
        (
            "[{\"base_host_virt_addr\": 1,, ]".into(),
            vec![null.as_fd()],
            "the handshake is not JSON",
        ),
        (
            good.clone(),
            vec![],
            "no file descriptor came with the handshake",
        ),
        (
            good.clone(),
            vec![null.as_fd(); 3],
            "3 file descriptors came with the handshake",
        ),
        (
            good.clone(),
            vec![null.as_fd()],
            "is not a userfaultfd (it is /dev/null)",
        ),
        (
            "{\"regions\": 1}".into(),
            vec![null.as_fd()],
            "not a JSON array of regions",
        ),
        (
            json!([{"base_host_virt_addr": 0x10000, "offset": 0}]).to_string(),
            vec![null.as_fd()],
            "region 0: no \"size\"",
        ),
        (
            json!([region(0x10000, 8192, 0), region(0x11000, 4096, 8192)]).to_string(),
            vec![null.as_fd()],
            "regions 0 and 1 overlap in the guest's address space",
        ),
        (
            json!([region(0x10800, 4096, 0)]).to_string(),
            vec![null.as_fd()],
            "is not a multiple of the page size 4096",
        ),
        ("".into(), vec![], "no complete handshake within 1s"),
    ];
    for (n, (body, fds, want)) in cases.iter().enumerate() {
        let s = h.connect();
        if !body.is_empty() {
            send(&s, body.as_bytes(), fds);
        }
        let vm = format!("VM {} (pid {}", n + 1, std::process::id());
        let line = h.line(|l| l.contains(&vm));
        assert!(
            line.contains("refused the handshake") && line.contains(want),
            "{body}: {line}"
        );
        closed_by_handler(&s).unwrap();
        assert!(h.alive(), "the handler exited after {body}: {:#?}", h.seen);
    }
    // A peer that hangs up before its whole body is refused too.
    let s = h.connect();
    send(&s, &good.as_bytes()[..9], &[null.as_fd()]);
    drop(s);
    let line = h.line(|l| l.contains("VM 10 "));
    assert!(
        line.contains("the connection closed before a complete handshake (9 bytes received)"),
        "{line}"
    );
    assert!(h.alive());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn once_exits_1_after_a_refused_handshake_and_removes_its_socket() {
    let dir = scratch("once");
    let mem = dir.join("mem");
    std::fs::write(&mem, vec![0u8; 8192]).unwrap();
    let mut h = Handler::start(&dir, &mem, &["--once"]);
    let s = h.connect();
    send(&s, b"[]", &[]);
    let line = h.line(|l| l.contains("refused"));
    assert!(line.contains("no file descriptor"), "{line}");
    let st = hostmem_testkit::spawn::wait_bounded(&mut h.child, STEP).unwrap();
    assert_eq!(st.code(), Some(1));
    assert!(!h.socket.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_handler_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let dir = scratch("bind");
    let mem = dir.join("mem");
    std::fs::write(&mem, vec![0u8; 8192]).unwrap();
    let h = Handler::start(&dir, &mem, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_hostmem"))
        .args(["uffd-handler", "--once", "--socket"])
        .arg(&h.socket)
        .arg("--image")
        .arg(&mem)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another handler listens there"));
    drop(h); // killed: its socket file stays, stale
    let mut h = Handler::start(&dir, &mem, &[]);
    assert!(h.alive());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client in a process of its own (Python's `socket.send_fds`) that sends a bad
/// handshake and then waits, as a Firecracker whose vCPU waits on its first fault.
const WAITING_CLIENT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
socket.send_fds(s, [b'[{"base_host_virt_addr": 1,, ]'], [os.open("/dev/null", os.O_RDONLY)])
sys.stdin.read()
"#;

#[test]
fn kill_on_error_kills_the_process_whose_handshake_was_refused() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("kill");
    let mem = dir.join("mem");
    std::fs::write(&mem, vec![0u8; 8192]).unwrap();
    let mut h = Handler::start(&dir, &mem, &["--kill-on-error"]);
    let mut vm = Command::new("python3")
        .args(["-c", WAITING_CLIENT])
        .arg(&h.socket)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 (the suite's pytest needs it too)");
    let line = h.line(|l| l.contains("killed pid"));
    assert!(
        line.contains(&format!("killed pid {} (--kill-on-error)", vm.id())),
        "{line}"
    );
    let st = hostmem_testkit::spawn::wait_bounded(&mut vm, STEP).unwrap();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    assert!(h.alive());
    std::fs::remove_dir_all(&dir).unwrap();
}
