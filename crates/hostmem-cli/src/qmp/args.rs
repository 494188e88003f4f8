//! Command arguments: JSON checked the way QEMU's QAPI input visitor checks it (type
//! of each member, missing and unexpected members, with QEMU's wording), and JSON
//! values turned into the library's typed property values.

use serde_json::{Map, Value};

use super::error::QmpError;

/// A command's `arguments`, taken member by member; [`Args::finish`] refuses the rest.
pub struct Args {
    map: Map<String, Value>,
}

impl Args {
    pub fn new(map: Map<String, Value>) -> Self {
        Args { map }
    }

    /// A member that must be there, any JSON type.
    pub fn value(&mut self, name: &str) -> Result<Value, QmpError> {
        self.map.remove(name).ok_or_else(|| QmpError::missing(name))
    }

    pub fn opt_value(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// A member that must be a JSON string.
    pub fn string(&mut self, name: &str) -> Result<String, QmpError> {
        let v = self.value(name)?;
        as_string(name, v)
    }

    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, QmpError> {
        self.opt_value(name).map(|v| as_string(name, v)).transpose()
    }

    /// All members, for a command that checks them itself (`object-add`: the library
    /// checks them like a JSON `-object`).
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// Fails on the first member nobody took (QEMU's visit_check_struct).
    pub fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().next() {
            Some(k) => Err(QmpError::unexpected(k)),
            None => Ok(()),
        }
    }
}

fn as_string(name: &str, v: Value) -> Result<String, QmpError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(QmpError::bad_type(name, "string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_taken_once_and_the_rest_refused() {
        let Value::Object(m) = json!({"id": "m", "size": 1}) else {
            unreachable!()
        };
        let mut a = Args::new(m);
        assert_eq!(a.string("id").unwrap(), "m");
        assert_eq!(
            a.string("id").unwrap_err().desc,
            "Parameter 'id' is missing"
        );
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'size' is unexpected"
        );
    }
}
