//! The JSON report against its written schema (docs/report.schema.json), with Python's
//! `jsonschema` (tests/common/schema.rs): real output of `hostmem run --json` for every
//! kind and of `--check --json`. Without python3 or the module the test fails, saying so.

mod common;

use std::process::Command;

use common::schema::{assert_valid, schema_file, validate};

const BIN: &str = env!("CARGO_BIN_EXE_hostmem");
const REPORT: &str = "urn:hostmem:report:1";

fn run_json(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_run_report_of_every_kind_matches_its_schema() {
    let dir = std::env::temp_dir();
    let file = format!(
        "memory-backend-file,id=f,size=2M,mem-path={},share=on,prealloc=on",
        dir.display()
    );
    let doc = run_json(&[
        "run",
        "--json",
        "--object",
        "memory-backend-ram,id=r,size=2M,prealloc=on,policy=bind,host-nodes=0",
        "--object",
        "memory-backend-memfd,id=m,size=2M",
        "--object",
        "memory-backend-shm,id=s,size=2M",
        "--object",
        &file,
    ]);
    assert_valid(&doc, REPORT);
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["schema-version"], 1);
    assert_eq!(v["backends"].as_array().unwrap().len(), 4);
}

#[test]
fn the_check_report_matches_its_schema() {
    let doc = run_json(&[
        "run",
        "--check",
        "--json",
        "--object",
        "memory-backend-ram,id=r,size=2M",
    ]);
    assert_valid(&doc, REPORT);
}

#[test]
fn the_schema_refuses_a_report_that_breaks_it() {
    let doc = run_json(&[
        "run",
        "--json",
        "--object",
        "memory-backend-ram,id=r,size=2M",
    ]);
    let mut v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    v["backends"][0]["size"] = serde_json::json!("2M");
    let e = validate(&v.to_string(), REPORT).unwrap_err();
    assert!(e.contains("['backends', 0"), "{e}");
    v["backends"][0]["size"] = serde_json::json!(2097152);
    v["schema-version"] = serde_json::json!(2);
    assert!(validate(&v.to_string(), REPORT).is_err());
}

/// The version the binary writes is the one in each schema's `$id`: one
/// `SCHEMA_VERSION` for `hostmem run` (report.schema.json) and `hostmem vm`
/// (vm.schema.json, whose documents tests/vm.rs validates against a real QEMU).
#[test]
fn the_schema_ids_carry_the_version_the_documents_write() {
    let v = hostmem_cli::report::SCHEMA_VERSION;
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(schema_file(name)).unwrap()).unwrap()
    };
    let report = read("report.schema.json");
    assert_eq!(report["$id"], format!("urn:hostmem:report:{v}"));
    assert_eq!(report["properties"]["schema-version"]["const"], v);
    let vm = read("vm.schema.json");
    assert_eq!(vm["$id"], format!("urn:hostmem:vm:{v}"));
    assert_eq!(vm["$defs"]["schema-version"]["const"], v);
}

/// The schema's lists are the library's tables, so a kind, a policy or a property added
/// to the library without its schema entry fails here: the policy names, the kinds'
/// type names, and every property of every kind among the backend's keys (the keys
/// that are not properties are the report's own, listed here).
#[test]
fn the_schema_lists_every_kind_policy_and_property_the_library_has() {
    let text = std::fs::read_to_string(schema_file("report.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let defs = &schema["$defs"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let policies: Vec<String> = hostmem::Policy::ALL
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(strings(&defs["policy"]["enum"]), policies);
    let backend = &defs["backend"]["properties"];
    let kinds: Vec<String> = hostmem::Kind::ALL
        .iter()
        .map(|k| k.qom_type().to_string())
        .collect();
    assert_eq!(strings(&backend["qom-type"]["enum"]), kinds);
    let mut props: Vec<String> = hostmem::Kind::ALL
        .iter()
        .flat_map(|&k| hostmem::kind::properties(k))
        .map(|p| p.name.to_string())
        .collect();
    props.sort();
    props.dedup();
    const REPORT_OWN: [&str; 8] = [
        "id",
        "qom-type",
        "host-addr",
        "page-size",
        "notes",
        "prealloc-seconds",
        "prealloc-gib-per-sec",
        "prealloc-threads-used",
    ];
    let mut keys: Vec<String> = backend
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !REPORT_OWN.contains(&k.as_str()) && *k != "kernel")
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(
        keys, props,
        "the backend's keys in the schema against the property table"
    );
}
