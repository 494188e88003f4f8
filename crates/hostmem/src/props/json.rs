//! Property values from JSON, typed the way QEMU's QObject input visitor types them
//! (sizes and counts as numbers, booleans as true/false, node and CPU lists as arrays),
//! with its wording: `Invalid parameter type for 'NAME', expected: TYPE` for a JSON
//! value of the wrong kind, `Parameter 'NAME' expects TYPE` for a number out of range.

use serde_json::Value as Json;

use super::{PropType, PropValue, Resolver};
use crate::error::{Error, Result};
use crate::numa::NodeSet;

fn invalid_type(prop: &str, expected: &'static str) -> Error {
    Error::InvalidType {
        prop: prop.to_string(),
        expected,
    }
}

fn out_of_range(prop: &str, expected: &'static str) -> Error {
    Error::BadType {
        prop: prop.to_string(),
        expected,
    }
}

/// One property value from JSON; links are resolved among `objects`.
pub fn from_json(prop: &str, ty: PropType, v: &Json, objects: &Resolver<'_>) -> Result<PropValue> {
    match ty {
        PropType::Size => uint64(prop, v).map(PropValue::Int),
        PropType::U32 => {
            let n = integer(prop, v)?;
            u32::try_from(n)
                .map(|n| PropValue::Int(n.into()))
                .map_err(|_| out_of_range(prop, "uint32_t"))
        }
        PropType::Bool => v
            .as_bool()
            .map(PropValue::Bool)
            .ok_or_else(|| invalid_type(prop, "boolean")),
        PropType::Nodes => node_list(prop, v).map(PropValue::Nodes),
        PropType::Policy | PropType::Path | PropType::OnOffAuto | PropType::Link => {
            let s = v.as_str().ok_or_else(|| invalid_type(prop, "string"))?;
            ty.parse_with(prop, s, objects)
        }
    }
}

/// Any JSON integer, negative ones included (range checks are the caller's).
fn integer(prop: &str, v: &Json) -> Result<i128> {
    let n = v
        .as_u64()
        .map(i128::from)
        .or_else(|| v.as_i64().map(i128::from));
    n.ok_or_else(|| out_of_range(prop, "uint64"))
}

/// A JSON integer in u64 range. QEMU takes negative numbers here and wraps them (a
/// size of -1 then aborts QEMU); they are refused instead.
pub fn uint64(prop: &str, v: &Json) -> Result<u64> {
    v.as_u64().ok_or_else(|| out_of_range(prop, "uint64"))
}

/// A JSON array of uint16 values (QEMU's uint16List: CPU and node ids).
pub fn u16_list(prop: &str, v: &Json) -> Result<Vec<u16>> {
    let items = v.as_array().ok_or_else(|| invalid_type(prop, "array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let elem = format!("{prop}[{i}]");
            let n = integer(&elem, item)?;
            u16::try_from(n).map_err(|_| out_of_range(&elem, "uint16_t"))
        })
        .collect()
}

/// A JSON array of node ids; ids past the kernel's limit get QEMU's
/// `Invalid host-nodes value: N`.
pub fn node_list(prop: &str, v: &Json) -> Result<NodeSet> {
    let mut set = NodeSet::new();
    for n in u16_list(prop, v)? {
        set.insert(u64::from(n))?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_keep_their_ranges() {
        let none = &|_: &str| None;
        let t = |ty, v| from_json("p", ty, &v, none);
        let e = |ty, v| t(ty, v).unwrap_err().to_string();
        assert_eq!(
            e(PropType::Size, json!(1.5)),
            "Parameter 'p' expects uint64"
        );
        assert_eq!(
            t(PropType::Size, json!(u64::MAX)).unwrap(),
            PropValue::Int(u64::MAX)
        );
        assert_eq!(
            e(PropType::U32, json!(-1)),
            "Parameter 'p' expects uint32_t"
        );
        assert_eq!(
            e(PropType::U32, json!(4294967296u64)),
            "Parameter 'p' expects uint32_t"
        );
        assert_eq!(e(PropType::U32, json!("4")), "Parameter 'p' expects uint64");
        assert_eq!(
            e(PropType::Policy, json!("weird")),
            "Parameter 'p' does not accept value 'weird'"
        );
    }

    #[test]
    fn node_lists_are_arrays_of_small_integers() {
        let e = |v| node_list("host-nodes", &v).unwrap_err().to_string();
        assert_eq!(
            node_list("host-nodes", &json!([0, 2, 2])).unwrap(),
            NodeSet::parse("0,2").unwrap()
        );
        assert_eq!(
            e(json!(0)),
            "Invalid parameter type for 'host-nodes', expected: array"
        );
        assert_eq!(e(json!(["0"])), "Parameter 'host-nodes[0]' expects uint64");
        assert_eq!(
            e(json!([1, -1])),
            "Parameter 'host-nodes[1]' expects uint16_t"
        );
        assert_eq!(e(json!([4000])), "Invalid host-nodes value: 4000");
    }

    #[test]
    fn qapi_types_and_wording() {
        let none = &|_: &str| None;
        assert_eq!(
            from_json("size", PropType::Size, &json!(1024), none).unwrap(),
            PropValue::Int(1024)
        );
        assert_eq!(
            from_json("size", PropType::Size, &json!(-1), none)
                .unwrap_err()
                .to_string(),
            "Parameter 'size' expects uint64"
        );
        assert_eq!(
            from_json("merge", PropType::Bool, &json!("on"), none)
                .unwrap_err()
                .to_string(),
            "Invalid parameter type for 'merge', expected: boolean"
        );
        assert_eq!(
            from_json("host-nodes", PropType::Nodes, &json!([0, 70000]), none)
                .unwrap_err()
                .to_string(),
            "Parameter 'host-nodes[1]' expects uint16_t"
        );
        assert_eq!(
            from_json("prealloc-context", PropType::Link, &json!("tc9"), none)
                .unwrap_err()
                .to_string(),
            "Device 'tc9' not found"
        );
    }
}
