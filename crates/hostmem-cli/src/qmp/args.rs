//! Command arguments: JSON checked the way QEMU's QAPI input visitor checks it (type
//! of each member, missing and unexpected members, with QEMU's wording), and JSON
//! values turned into the library's typed property values.

use hostmem::numa::NodeSet;
use hostmem::props::{Common, Prop, PropType};
use hostmem::Kind;
use hostmem::PropValue;
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

/// `object-add`'s members of one kind, in the order QEMU's schema visits them: the
/// common memory-backend members, then the kind's own, each group alphabetically.
fn schema_order(kind: Kind) -> Vec<&'static Prop> {
    let mut common: Vec<_> = Common::PROPS.iter().collect();
    let mut own: Vec<_> = kind.own_props().iter().collect();
    common.sort_by_key(|p| p.name);
    own.sort_by_key(|p| p.name);
    common.extend(own);
    common
}

/// `object-add`'s backend members: every member typed, required ones present, no
/// unknown ones; values in schema order, ready for `Backend::set`.
pub fn backend_props(
    kind: Kind,
    args: &mut Args,
) -> Result<Vec<(&'static str, PropValue)>, QmpError> {
    let mut out = Vec::new();
    for info in schema_order(kind) {
        match args.opt_value(info.name) {
            Some(v) => out.push((info.name, prop_value(info.name, info.ty, &v)?)),
            None if info.required => return Err(QmpError::missing(info.name)),
            None => {}
        }
    }
    Ok(out)
}

/// One property value from JSON, checked like QEMU's QObject input visitor.
pub fn prop_value(name: &str, ty: PropType, v: &Value) -> Result<PropValue, QmpError> {
    match ty {
        PropType::Size => uint64(name, v).map(PropValue::Int),
        PropType::U32 => {
            let n = integer(name, v)?;
            u32::try_from(n)
                .map(|n| PropValue::Int(n as u64))
                .map_err(|_| QmpError::bad_value(name, "uint32_t"))
        }
        PropType::Bool => v
            .as_bool()
            .map(PropValue::Bool)
            .ok_or_else(|| QmpError::bad_type(name, "boolean")),
        PropType::Nodes => node_list(name, v).map(PropValue::Nodes),
        PropType::Policy | PropType::Path | PropType::OnOffAuto => {
            let s = v
                .as_str()
                .ok_or_else(|| QmpError::bad_type(name, "string"))?;
            Ok(ty.parse(name, s)?)
        }
    }
}

/// Any JSON integer, negative ones included (range checks are the caller's).
fn integer(name: &str, v: &Value) -> Result<i128, QmpError> {
    let n = v
        .as_u64()
        .map(i128::from)
        .or_else(|| v.as_i64().map(i128::from));
    n.ok_or_else(|| QmpError::bad_value(name, "uint64"))
}

/// A JSON integer in u64 range. QEMU takes negative numbers here and wraps them (a
/// size of -1 then aborts QEMU); they are refused instead.
pub fn uint64(name: &str, v: &Value) -> Result<u64, QmpError> {
    v.as_u64()
        .ok_or_else(|| QmpError::bad_value(name, "uint64"))
}

/// A JSON array of node ids (QEMU's uint16List); ids past the kernel's limit are
/// refused by the library with QEMU's `Invalid host-nodes value: N`.
pub fn node_list(name: &str, v: &Value) -> Result<NodeSet, QmpError> {
    let items = v
        .as_array()
        .ok_or_else(|| QmpError::bad_type(name, "array"))?;
    let mut set = NodeSet::new();
    for (i, item) in items.iter().enumerate() {
        let elem = format!("{name}[{i}]");
        let n = integer(&elem, item)?;
        let n = u16::try_from(n).map_err(|_| QmpError::bad_value(&elem, "uint16_t"))?;
        set.insert(u64::from(n))?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        match v {
            Value::Object(m) => Args::new(m),
            _ => unreachable!(),
        }
    }

    fn desc(r: Result<impl std::fmt::Debug, QmpError>) -> String {
        r.unwrap_err().desc
    }

    #[test]
    fn members_are_typed_like_qapi() {
        let mut a = args(json!({"size": "1M"}));
        assert_eq!(
            desc(backend_props(Kind::Ram, &mut a)),
            "Parameter 'size' expects uint64"
        );
        let mut a = args(json!({"merge": 1}));
        assert_eq!(
            desc(backend_props(Kind::Ram, &mut a)),
            "Invalid parameter type for 'merge', expected: boolean"
        );
        let mut a = args(json!({"merge": true}));
        assert_eq!(
            desc(backend_props(Kind::Ram, &mut a)),
            "Parameter 'size' is missing"
        );
        let mut a = args(json!({"size": 1, "sized": 3}));
        assert!(backend_props(Kind::Ram, &mut a).is_ok());
        assert_eq!(desc(a.finish()), "Parameter 'sized' is unexpected");
        let mut a = args(json!({"size": 1, "policy": "weird"}));
        assert_eq!(
            desc(backend_props(Kind::Ram, &mut a)),
            "Parameter 'policy' does not accept value 'weird'"
        );
        let mut a = args(json!({"size": 1}));
        assert_eq!(
            desc(backend_props(Kind::File, &mut a)),
            "Parameter 'mem-path' is missing"
        );
    }

    #[test]
    fn numbers_keep_their_ranges() {
        let t = |ty, v| prop_value("p", ty, &v);
        assert_eq!(
            t(PropType::Size, json!(-1)).unwrap_err().desc,
            "Parameter 'p' expects uint64"
        );
        assert_eq!(
            t(PropType::Size, json!(1.5)).unwrap_err().desc,
            "Parameter 'p' expects uint64"
        );
        assert_eq!(
            t(PropType::Size, json!(u64::MAX)).unwrap(),
            PropValue::Int(u64::MAX)
        );
        assert_eq!(
            t(PropType::U32, json!(-1)).unwrap_err().desc,
            "Parameter 'p' expects uint32_t"
        );
        assert_eq!(
            t(PropType::U32, json!(4294967296u64)).unwrap_err().desc,
            "Parameter 'p' expects uint32_t"
        );
        assert_eq!(
            t(PropType::U32, json!("4")).unwrap_err().desc,
            "Parameter 'p' expects uint64"
        );
    }

    #[test]
    fn node_lists_are_arrays_of_small_integers() {
        assert_eq!(
            node_list("host-nodes", &json!([0, 2, 2])).unwrap(),
            NodeSet::parse("0,2").unwrap()
        );
        assert_eq!(
            desc(node_list("host-nodes", &json!(0))),
            "Invalid parameter type for 'host-nodes', expected: array"
        );
        assert_eq!(
            desc(node_list("host-nodes", &json!(["0"]))),
            "Parameter 'host-nodes[0]' expects uint64"
        );
        assert_eq!(
            desc(node_list("host-nodes", &json!([1, -1]))),
            "Parameter 'host-nodes[1]' expects uint16_t"
        );
        assert_eq!(
            desc(node_list("host-nodes", &json!([4000]))),
            "Invalid host-nodes value: 4000"
        );
    }
}
