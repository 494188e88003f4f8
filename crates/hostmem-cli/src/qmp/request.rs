//! The request envelope (`execute` / `exec-oob`, `arguments`, `id`), checked in the
//! order and with the words of QEMU's dispatcher, before any command runs.

use serde_json::{Map, Value};

use super::error::QmpError;

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
    /// Sent as `exec-oob`.
    pub oob: bool,
}

/// A request that could not be taken apart: the error, and the `id` to echo if the
/// request was an object that had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub error: QmpError,
    pub id: Option<Value>,
}

/// Parses one framed message. `oob_enabled`: whether this session negotiated `oob`
/// (without it, `exec-oob` is an unknown member, as in QEMU).
pub fn parse(bytes: &[u8], oob_enabled: bool) -> Result<Request, Refused> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Refused {
        error: QmpError::generic(format!("JSON parse error, {e}")),
        id: None,
    })?;
    // What serde_json takes but QEMU's parser refuses (a member given twice, `\u0000`)
    // is refused in QEMU's words.
    if let Ok(Err(e)) = std::str::from_utf8(bytes).map(hostmem::objspec::parse_json) {
        return Err(Refused {
            error: QmpError::generic(e.to_string()),
            id: None,
        });
    }
    let Value::Object(mut obj) = value else {
        return Err(Refused {
            error: QmpError::generic("QMP input must be a JSON object"),
            id: None,
        });
    };
    let id = obj.remove("id");
    let refuse = |desc: String| Refused {
        error: QmpError::generic(desc),
        id: id.clone(),
    };
    let mut execute = None;
    let mut exec_oob = None;
    let mut arguments = None;
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("execute", Value::String(s)) => execute = Some(s),
            ("exec-oob", Value::String(s)) if oob_enabled => exec_oob = Some(s),
            ("arguments", Value::Object(m)) => arguments = Some(m),
            ("execute", _) => {
                return Err(refuse("QMP input member 'execute' must be a string".into()))
            }
            ("exec-oob", _) if oob_enabled => {
                return Err(refuse(
                    "QMP input member 'exec-oob' must be a string".into(),
                ))
            }
            ("arguments", _) => {
                return Err(refuse(
                    "QMP input member 'arguments' must be an object".into(),
                ))
            }
            (other, _) => return Err(refuse(format!("QMP input member '{other}' is unexpected"))),
        }
    }
    let (command, oob) = match (execute, exec_oob) {
        (Some(_), Some(_)) => {
            return Err(refuse(
                "QMP input member 'execute' clashes with 'exec-oob'".into(),
            ))
        }
        (Some(c), None) => (c, false),
        (None, Some(c)) => (c, true),
        (None, None) => return Err(refuse("QMP input lacks member 'execute'".into())),
    };
    Ok(Request {
        command,
        arguments: arguments.unwrap_or_default(),
        id,
        oob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desc(text: &str, oob: bool) -> (String, Option<Value>) {
        let r = parse(text.as_bytes(), oob).unwrap_err();
        (r.error.desc, r.id)
    }

    #[test]
    fn envelope_errors_read_like_qemu() {
        assert_eq!(desc("[]", false).0, "QMP input must be a JSON object");
        assert_eq!(desc("{}", false).0, "QMP input lacks member 'execute'");
        assert_eq!(
            desc(r#"{"execute":5,"id":9}"#, false),
            (
                "QMP input member 'execute' must be a string".into(),
                Some(json!(9))
            )
        );
        assert_eq!(
            desc(r#"{"execute":"x","arguments":[]}"#, false).0,
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            desc(r#"{"execute":"x","foo":1}"#, false).0,
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            desc(r#"{"exec-oob":"x"}"#, false).0,
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            desc(r#"{"execute":"x","exec-oob":"x"}"#, true).0,
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        assert!(desc("{\"execute\": bad}", false)
            .0
            .starts_with("JSON parse error, "));
    }

    #[test]
    fn requests_keep_their_id_and_arguments() {
        let r = parse(
            br#"{"execute":"qom-get","arguments":{"path":"/"},"id":{"a":[1]}}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.command, "qom-get");
        assert_eq!(r.arguments["path"], "/");
        assert_eq!(r.id, Some(json!({"a":[1]})));
        assert!(!r.oob);
        assert!(parse(br#"{"exec-oob":"quit"}"#, true).unwrap().oob);
    }
}
