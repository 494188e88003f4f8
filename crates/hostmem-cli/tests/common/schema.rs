//! Checks a JSON document hostmem printed against the written schemas in docs/
//! (`*.schema.json`, JSON Schema 2020-12) with Python's `jsonschema` (pip install
//! jsonschema; scripts/test installs it). Every schema file is registered under its
//! `$id` in a `referencing.Registry`, so one schema can `$ref` another
//! (docs/vm.schema.json uses docs/report.schema.json's `kernel`). Without python3 or
//! the module the test fails, saying so.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// docs/NAME in the repository.
pub fn schema_file(name: &str) -> PathBuf {
    docs().join(name)
}

/// Checks every schema file against the 2020-12 meta-schema, then validates stdin
/// against `{"$ref": argv[2]}`; prints one line per error (path in the document and
/// the validator's message, with the messages of a `oneOf`'s branches indented).
const SCRIPT: &str = r#"
import glob, json, os, sys
import jsonschema, referencing
from referencing.jsonschema import DRAFT202012
resources = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], '*.schema.json'))):
    schema = json.load(open(path))
    jsonschema.Draft202012Validator.check_schema(schema)
    resources.append((schema['$id'], DRAFT202012.create_resource(schema)))
registry = referencing.Registry().with_resources(resources)
validator = jsonschema.Draft202012Validator({'$ref': sys.argv[2]}, registry=registry)
lines = []
for e in validator.iter_errors(json.load(sys.stdin)):
    lines.append(f'{list(e.absolute_path)}: {e.message}')
    lines.extend(f'    {list(c.absolute_path)}: {c.message}' for c in e.context)
print('\n'.join(lines))
sys.exit(1 if lines else 0)
"#;

/// Validates `doc` against the schema `uri` names (`urn:hostmem:vm:1#/$defs/report`);
/// the validator's messages if it is refused.
pub fn validate(doc: &str, uri: &str) -> Result<(), String> {
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(docs())
        .arg(uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check hostmem's JSON against its schema");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "Python's jsonschema (with referencing) is needed: pip install jsonschema\n{stderr}"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Fails the test with the validator's messages when `doc` does not match `uri`.
pub fn assert_valid(doc: &str, uri: &str) {
    if let Err(e) = validate(doc, uri) {
        panic!("{uri} refuses hostmem's output:\n{e}\ndocument: {doc}");
    }
}
