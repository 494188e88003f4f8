//! The JSON report against its written schema (docs/report.schema.json), with Python's
//! `jsonschema` (pip install jsonschema; scripts/test installs it): real output of
//! `hostmem run --json` for every kind and of `--check --json`. Without python3 or the
//! module the test fails, saying so.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hostmem");

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/report.schema.json")
}

/// Validates `doc` with jsonschema's Draft 2020-12 validator; the errors if any.
fn validate(doc: &str) -> Result<(), String> {
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(schema)\n\
        errs = [f'{list(e.absolute_path)}: {e.message}' for e in \
        jsonschema.Draft202012Validator(schema).iter_errors(json.load(sys.stdin))]\n\
        print('\\n'.join(errs)); sys.exit(1 if errs else 0)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(schema_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check the report against its schema");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'jsonschema'"),
        "Python's jsonschema is needed: pip install jsonschema"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

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
    validate(&doc).unwrap();
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
    validate(&doc).unwrap();
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
    let e = validate(&v.to_string()).unwrap_err();
    assert!(e.contains("['backends', 0"), "{e}");
    v["backends"][0]["size"] = serde_json::json!(2097152);
    v["schema-version"] = serde_json::json!(2);
    assert!(validate(&v.to_string()).is_err());
}

/// The version the binary writes is the one in the schema's `$id`.
#[test]
fn the_schema_id_carries_the_version_the_report_writes() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    let v = hostmem_cli::report::SCHEMA_VERSION;
    assert_eq!(schema["$id"], format!("urn:hostmem:report:{v}"));
    assert_eq!(schema["properties"]["schema-version"]["const"], v);
}
