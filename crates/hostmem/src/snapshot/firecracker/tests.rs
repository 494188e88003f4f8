//! The handshake parser against what Firecracker sends and what it must refuse.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::json;

use super::*;

fn region(base: u64, size: u64, offset: u64) -> Value {
    json!({"base_host_virt_addr": base, "size": size, "offset": offset,
           "page_size": 4096, "page_size_kib": 4096})
}

fn refused(v: Value) -> String {
    parse_regions(&v).expect_err("accepted")
}

#[test]
fn firecrackers_body_of_every_version_parses() {
    // 1.12 and later: page_size and the misnamed page_size_kib, both bytes.
    let v = json!([
        region(0x7f00_0000_0000, 1 << 20, 0),
        region(0x7f10_0000_0000, 2 << 20, 1 << 20)
    ]);
    let m = parse_regions(&v).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[1],
        Mapping {
            base_host_virt_addr: 0x7f10_0000_0000,
            size: 2 << 20,
            offset: 1 << 20,
            page_size: 4096
        }
    );
    // 1.7 to 1.11: only page_size_kib (2 MiB hugetlbfs here).
    let v = json!([{"base_host_virt_addr": 0x4000_0000u64, "size": 4 << 20, "offset": 0, "page_size_kib": 2 << 20}]);
    assert_eq!(parse_regions(&v).unwrap()[0].page_size, 2 << 20);
    // Before 1.7: no page size at all, base pages; newer fields ignored.
    let v =
        json!([{"base_host_virt_addr": 0x4000_0000u64, "size": 8192, "offset": 0, "gpa_start": 0}]);
    assert_eq!(parse_regions(&v).unwrap()[0].page_size, DEFAULT_PAGE_SIZE);
}

#[test]
fn each_malformed_region_list_is_refused_naming_the_region_and_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"regions": []}), "is an object, not a JSON array"),
        (json!([]), "lists no regions"),
        (
            json!([region(0, 4096, 0), 7]),
            "region 1 is a number, not an object",
        ),
        (
            json!([{"size": 4096, "offset": 0}]),
            "region 0: no \"base_host_virt_addr\"",
        ),
        (
            json!([{"base_host_virt_addr": 0, "offset": 0}]),
            "region 0: no \"size\"",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": 4096}]),
            "region 0: no \"offset\"",
        ),
        (
            json!([{"base_host_virt_addr": -4096, "size": 4096, "offset": 0}]),
            "\"base_host_virt_addr\" is -4096, not an unsigned integer",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": "4096", "offset": 0}]),
            "\"size\" is \"4096\"",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": 4096, "offset": 0, "page_size": 4096, "page_size_kib": 4}]),
            "differ",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": 4096, "offset": 0, "page_size": 4}]),
            "page size 4 is not a power of two from 4096",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": 12288, "offset": 0, "page_size": 12288}]),
            "page size 12288",
        ),
        (json!([region(0, 0, 0)]), "region 0: \"size\" is 0"),
        (
            json!([region(0x1001, 4096, 0)]),
            "region 0: \"base_host_virt_addr\" 0x1001 is not a multiple of the page size 4096",
        ),
        (
            json!([region(0, 4096, 100)]),
            "\"offset\" 0x64 is not a multiple",
        ),
        (
            json!([region(0, 6000, 0)]),
            "\"size\" 0x1770 is not a multiple",
        ),
        (json!([region(u64::MAX - 4095, 8192, 0)]), "overflows"),
        (
            json!([region(0x10000, 0x4000, 0), region(0x12000, 0x1000, 0x4000)]),
            "regions 0 and 1 overlap in the guest's address space",
        ),
        (
            json!([region(0x10000, 0x4000, 0), region(0x20000, 0x1000, 0x3000)]),
            "regions 0 and 1 overlap in the memory file",
        ),
        (
            json!([{"base_host_virt_addr": 0, "size": 4096, "offset": 0, "is_guest_memfd": true}]),
            "secret-hiding",
        ),
    ];
    for (v, want) in cases {
        let e = refused(v.clone());
        assert!(e.contains(want), "{v}: {e:?} does not say {want:?}");
    }
}

fn send(body: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    if !body.is_empty() {
        scm::send_with_fds(&a, body, fds).unwrap();
    }
    (a, b)
}

#[test]
fn a_handshake_without_a_userfaultfd_is_refused_saying_what_came() {
    let null = File::open("/dev/null").unwrap();
    let body = json!([region(0, 4096, 0)]).to_string();
    let t = Duration::from_secs(5);
    let (_a, b) = send(body.as_bytes(), &[]);
    assert!(matches!(receive(&b, t), Err(HandshakeError::NoFd)));
    let (_a, b) = send(body.as_bytes(), &[null.as_fd()]);
    let e = receive(&b, t).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a userfaultfd (it is /dev/null)"),
        "{e}"
    );
    let (_a, b) = send(body.as_bytes(), &[null.as_fd(), null.as_fd(), null.as_fd()]);
    let e = receive(&b, t).unwrap_err();
    assert!(e.to_string().starts_with("3 file descriptors"), "{e}");
    let (_a, b) = send(b"[{\"base_host_virt_addr\": 0,, }]", &[null.as_fd()]);
    assert!(matches!(receive(&b, t), Err(HandshakeError::Json(_))));
}

#[test]
fn what_send_handshake_sends_is_what_firecracker_sends_and_receive_takes_it_back() {
    let (a, b) = UnixStream::pair().unwrap();
    let null = File::open("/dev/null").unwrap();
    let maps = vec![
        Mapping {
            base_host_virt_addr: 0x10000,
            size: 0x4000,
            offset: 0,
            page_size: 4096,
        },
        Mapping {
            base_host_virt_addr: 0x40000,
            size: 0x1000,
            offset: 0x4000,
            page_size: 4096,
        },
    ];
    send_handshake(&a, &maps, null.as_fd()).unwrap();
    let mut buf = vec![0u8; 4096];
    let got = scm::recv_with_fds(&b, &mut buf).unwrap();
    assert_eq!(got.fds.len(), 1);
    let v: Value = serde_json::from_slice(&buf[..got.len]).unwrap();
    assert_eq!(
        v,
        json!([region(0x10000, 0x4000, 0), region(0x40000, 0x1000, 0x4000)])
    );
    assert_eq!(parse_regions(&v).unwrap(), maps);
}

#[test]
fn a_body_split_across_sends_is_joined_and_silence_times_out() {
    let null = File::open("/dev/null").unwrap();
    let body = json!([region(0, 4096, 0)]).to_string();
    let (a, b) = send(&body.as_bytes()[..10], &[null.as_fd()]);
    std::io::Write::write_all(&mut &a, &body.as_bytes()[10..]).unwrap();
    // The body is complete: the one thing left wrong is the descriptor's kind.
    assert!(matches!(
        receive(&b, Duration::from_secs(5)),
        Err(HandshakeError::NotUffd(_))
    ));
    let (_a, b) = send(&body.as_bytes()[..10], &[null.as_fd()]);
    let e = receive(&b, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, HandshakeError::Timeout(_, 10)), "{e}");
    let (a, b) = send(&body.as_bytes()[..10], &[]);
    drop(a);
    assert!(matches!(
        receive(&b, Duration::MAX),
        Err(HandshakeError::Closed(10))
    ));
    let (a, b) = send(&body.as_bytes()[..10], &[]);
    drop(a);
    assert!(matches!(
        receive(&b, Duration::from_secs(5)),
        Err(HandshakeError::Closed(10))
    ));
}

#[test]
fn regions_past_the_memory_file_are_refused_and_a_raw_file_opens_as_one_region() {
    let dir = std::env::temp_dir().join(format!("hostmem-fc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mem");
    std::fs::write(&path, vec![1u8; 3 * 4096]).unwrap();
    let maps = parse_regions(&json!([
        region(0x10000, 4096, 0),
        region(0x20000, 8192, 4096)
    ]))
    .unwrap();
    let image = open_memory(&path, &maps).unwrap();
    assert_eq!(image.header().backend_len, 3 * 4096);
    let maps = parse_regions(&json!([
        region(0x10000, 4096, 0),
        region(0x20000, 8192, 8192)
    ]))
    .unwrap();
    let e = open_memory(&path, &maps).unwrap_err().to_string();
    assert!(e.contains("region 1 ([0x2000, 0x4000) of the memory) lies beyond the memory file, which has 12288 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
