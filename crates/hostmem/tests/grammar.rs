//! `-object` text read as QEMU 10 reads it (issue 20): one test per class of
//! disagreement the differential fuzzer found, with the issue's example, asserting the
//! backend hostmem configures from it (its id and property values) or the refusal in
//! QEMU's words. tests/qmp/test_grammar.py runs the same examples on QEMU itself.

use hostmem::{Kind, MachineDefaults, NodeSet, ObjectSpec, PropValue};

/// The backend a spec configures (nothing allocated): its id and property values.
fn backend(spec: &str) -> hostmem::Backend {
    ObjectSpec::parse(spec)
        .and_then(|s| s.to_backend(&MachineDefaults::default()))
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn get(spec: &str, prop: &str) -> PropValue {
    backend(spec).get(prop).unwrap()
}

fn refusal(spec: &str) -> String {
    ObjectSpec::parse(spec)
        .and_then(|s| s.to_backend(&MachineDefaults::default()))
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn class_1_bare_keys_are_short_form_booleans_with_qemus_warning() {
    let s = ObjectSpec::parse("memory-backend-ram,id=m,size=4M,merge,nodump").unwrap();
    assert_eq!(
        s.warnings,
        [
            "short-form boolean option 'merge' deprecated\nPlease use merge=on instead",
            "short-form boolean option 'nodump' deprecated\nPlease use dump=off instead",
        ]
    );
    let d = MachineDefaults {
        merge: false,
        ..Default::default()
    };
    let b = s.to_backend(&d).unwrap();
    assert_eq!(b.get("merge").unwrap(), PropValue::Bool(true));
    assert_eq!(b.get("dump").unwrap(), PropValue::Bool(false));
    // QEMU's own pmem example writes `share` bare.
    let f = "memory-backend-file,id=m,share,mem-path=/tmp,size=4M";
    assert_eq!(get(f, "share"), PropValue::Bool(true));
    assert_eq!(backend("memory-backend-ram,id,size=4M").id(), "on");
    assert_eq!(backend("memory-backend-ram,noid,size=4M").id(), "off");
}

#[test]
fn class_2_sizes_in_hex_and_with_a_leading_plus() {
    let size = |s: &str| get(&format!("memory-backend-ram,id=m,size={s}"), "size");
    assert_eq!(size("0x1000"), PropValue::Int(0x1000));
    assert_eq!(size("0X100000"), PropValue::Int(0x100000));
    assert_eq!(size("+4M"), PropValue::Int(4 << 20));
}

#[test]
fn class_3_single_quoted_json() {
    let s = ObjectSpec::parse("{'qom-type':'memory-backend-shm','id':'m','size':4194304}").unwrap();
    assert_eq!(s.kind().unwrap(), Kind::Shm);
    let b = s.to_backend(&MachineDefaults::default()).unwrap();
    assert_eq!(b.get("size").unwrap(), PropValue::Int(4 << 20));
}

#[test]
fn class_4_a_trailing_comma_is_nothing() {
    assert_eq!(
        get("memory-backend-ram,id=m,size=4M,", "size"),
        PropValue::Int(4 << 20)
    );
}

#[test]
fn class_5_a_repeated_key_keeps_its_last_value_and_never_reads_the_others() {
    let spec = "memory-backend-ram,id=m,size=4M,prealloc-threads=0,prealloc-threads=4";
    assert_eq!(get(spec, "prealloc-threads"), PropValue::Int(4));
}

#[test]
fn class_6_integers_in_hex() {
    let spec = "memory-backend-ram,id=m,size=4M,prealloc-threads=0x2";
    assert_eq!(get(spec, "prealloc-threads"), PropValue::Int(2));
    let spec = "memory-backend-ram,id=m,size=4M,policy=bind,host-nodes=0x0";
    assert_eq!(
        get(spec, "host-nodes"),
        PropValue::Nodes(NodeSet::parse("0").unwrap())
    );
}

#[test]
fn class_7_help_and_question_mark_list_the_properties() {
    for spec in ["memory-backend-ram,help", "memory-backend-ram,?"] {
        let h = hostmem::objspec::help(spec).unwrap();
        assert!(h.starts_with("memory-backend-ram options:\n"), "{h}");
        assert!(h.contains("\n  prealloc-threads=<int> "), "{h}");
    }
}

#[test]
fn class_8_a_json_member_given_twice_is_refused() {
    assert_eq!(
        refusal(r#"{"qom-type":"memory-backend-ram","id":"m","size":4194304,"size":4194304}"#),
        "JSON parse error, duplicate key"
    );
}

#[test]
fn class_9_a_blank_before_the_brace_makes_keyval_text() {
    assert_eq!(
        refusal(r#" {"qom-type":"memory-backend-ram","id":"m","size":4194304}"#),
        "Parameter 'qom-type' does not accept value ' {\"qom-type\":\"memory-backend-ram\"'"
    );
}

#[test]
fn class_10_trailing_blanks_in_values_are_not_trimmed() {
    for spec in [
        "memory-backend-ram,id=m,size=4M ",
        "memory-backend-ram,id=m,size=4M\n",
    ] {
        assert_eq!(refusal(spec), "Parameter 'size' expects a size value");
    }
}

#[test]
fn class_11_node_lists_qemu_does_not_have() {
    for nodes in [
        "host-nodes=0:0",
        "host-nodes=0,,0",
        "host-nodes=0,host-nodes=",
    ] {
        assert_eq!(
            refusal(&format!(
                "memory-backend-ram,id=m,size=4M,policy=bind,{nodes}"
            )),
            "Parameter 'host-nodes' expects a uint64 value or range",
            "{nodes}"
        );
    }
}

#[test]
fn class_12_a_leading_zero_then_8_is_invalid_octal() {
    assert_eq!(
        refusal("memory-backend-ram,id=m,size=4M,prealloc-threads=08"),
        "Parameter 'prealloc-threads' expects a uint64 value"
    );
}

#[test]
fn class_13_memfd_hugetlbsize_0_is_refused_without_hugetlb_too() {
    assert_eq!(
        refusal("memory-backend-memfd,id=m,size=4M,hugetlbsize=0"),
        "Property 'memory-backend-memfd.hugetlbsize' doesn't take value '0'"
    );
}

#[test]
fn class_14_the_first_id_names_the_object_and_later_ones_are_not_checked() {
    assert_eq!(backend("memory-backend-ram,id=A,size=4M,id=m").id(), "A");
    assert_eq!(backend("memory-backend-ram,id=A,size=4M,id=1x").id(), "A");
}

#[test]
fn class_15_fractional_sizes_round_to_the_nearest_byte() {
    assert_eq!(
        get("memory-backend-ram,id=m,size=0.1M", "size"),
        PropValue::Int(104858)
    );
}

#[test]
fn class_16_a_leading_zero_is_octal() {
    let spec = "memory-backend-ram,id=m,size=4M,prealloc-threads=010";
    assert_eq!(get(spec, "prealloc-threads"), PropValue::Int(8));
}

#[test]
fn a_size_of_2_to_the_64_minus_1_is_refused_in_every_spelling() {
    for spec in [
        "memory-backend-ram,id=m,size=18446744073709551615",
        "memory-backend-ram,id=m,size=0xffffffffffffffff",
        r#"{"qom-type":"memory-backend-ram","id":"m","size":18446744073709551615}"#,
    ] {
        let r = ObjectSpec::parse(spec).and_then(|s| {
            let mut b = s.to_backend(&MachineDefaults::default())?;
            b.complete()
        });
        assert!(r.is_err(), "{spec}");
    }
}

#[test]
fn no_text_makes_the_parsers_panic() {
    // Every cut and every one-byte change of spellings the grammar knows, through the
    // keyval, JSON and size parsers and the help check (a panic fails the test).
    let seeds = [
        "memory-backend-file,id=m,size=0.1M,mem-path=/tmp/a,,b,host-nodes=0-0x1,merge,nodump,",
        r#"{'qom-type':'memory-backend-ram',"id":"m\u00e9","size":18446744073709551615,"host-nodes":[0,1e3]}"#,
        "thread-context,id,cpu-affinity=0x0-010,node-affinity=0,help=x,?",
    ];
    let bytes = [
        b',', b'=', b'{', b'}', b'\'', b'"', b'\\', b'.', b'-', b'x', b'e', b' ', b'0',
    ];
    for seed in seeds {
        for cut in 0..=seed.len() {
            let variants =
                std::iter::once(seed[..cut].to_string()).chain(bytes.iter().filter_map(|&b| {
                    let mut v = seed.as_bytes().to_vec();
                    *v.get_mut(cut)? = b;
                    String::from_utf8(v).ok()
                }));
            for text in variants {
                let made = ObjectSpec::parse(&text)
                    .and_then(|s| s.to_backend(&MachineDefaults::default()));
                // The fuzz target's promise: every value prints as text that parses back.
                for p in made.iter().flat_map(|b| b.properties()) {
                    let v = made.as_ref().unwrap().get(p.name).unwrap();
                    assert_eq!(p.ty.parse(p.name, &v.to_string()).ok(), Some(v), "{text}");
                }
                let _ = hostmem::objspec::help(&text);
                let _ = hostmem::size::parse_size(text.get(cut..).unwrap_or(""));
            }
        }
    }
}
