//! QEMU's `-object` keyval text: `TYPE,id=ID,key=value,...` (`,,` is a literal comma;
//! repeated list keys such as `host-nodes=` add up to one list).

use super::{ObjectSpec, SpecValue};
use crate::error::{Error, Result};

/// Splits keyval text into key/value pairs, undoing `,,` escapes.
fn split_pairs(text: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(ch);
        }
    }
    items.push(cur);
    Ok(items
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (item, None),
        })
        .collect())
}

/// Parses `memory-backend-ram,id=m0,size=1G` (also `qom-type=...` spelled out).
pub(super) fn parse(text: &str) -> Result<ObjectSpec> {
    let mut pairs = split_pairs(text)?.into_iter();
    let mut type_name = None;
    let mut id = None;
    let mut props = Vec::new();
    if let Some((k, None)) = pairs.clone().next() {
        type_name = Some(k);
        pairs.next();
    }
    for (k, v) in pairs {
        let Some(v) = v else {
            return Err(if k.is_empty() {
                Error::BadType {
                    prop: "object".into(),
                    expected: "key=value pairs, not an empty one",
                }
            } else {
                Error::BadType {
                    prop: k,
                    expected: "a value: write key=value",
                }
            });
        };
        match k.as_str() {
            "qom-type" => type_name = Some(v),
            "id" => id = Some(v),
            _ => props.push((k, SpecValue::Text(v))),
        }
    }
    ObjectSpec::new(type_name, id, props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use crate::numa::NodeSet;
    use crate::objspec::ObjectType;
    use crate::props::{MachineDefaults, PropValue};

    #[test]
    fn parses_qemu_object_syntax() {
        let s = ObjectSpec::parse(
            "memory-backend-file,id=f0,size=1G,mem-path=/tmp/a,,b,host-nodes=0,host-nodes=2",
        )
        .unwrap();
        assert_eq!(s.ty, ObjectType::Backend(Kind::File));
        assert_eq!(s.id, "f0");
        assert!(s
            .props
            .contains(&("mem-path".into(), SpecValue::Text("/tmp/a,b".into()))));
        let b = s.to_backend(&MachineDefaults::default()).unwrap();
        assert_eq!(
            b.get("host-nodes").unwrap(),
            PropValue::Nodes(NodeSet::parse("0,2").unwrap())
        );
        assert_eq!(b.get("size").unwrap(), PropValue::Int(1 << 30));
    }

    #[test]
    fn qom_type_spelled_out_and_repeated_affinity_keys() {
        let s = ObjectSpec::parse("qom-type=memory-backend-ram,id=m,size=1M").unwrap();
        assert_eq!(s.ty, ObjectType::Backend(Kind::Ram));
        let tc = ObjectSpec::parse("thread-context,id=t,cpu-affinity=0,cpu-affinity=1")
            .unwrap()
            .to_context()
            .unwrap();
        tc.complete().unwrap();
        let allowed = crate::sys::allowed_cpus();
        let want: Vec<usize> = [0, 1].into_iter().filter(|c| allowed.contains(c)).collect();
        assert_eq!(tc.cpu_affinity().unwrap(), want, "both keys add up");
        assert!(ObjectSpec::parse("memory-backend-ram,id=m,size=1M")
            .unwrap()
            .to_context()
            .is_err());
    }

    #[test]
    fn errors_use_qemu_wording() {
        let e = |t: &str| {
            ObjectSpec::parse(t)
                .and_then(|s| s.to_backend(&MachineDefaults::default()).map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("memory-backend-ram,id=m,size=big"),
            "Parameter 'size' expects a size value"
        );
        assert_eq!(e("memory-backend-ram,size=1G"), "Parameter 'id' is missing");
        assert_eq!(
            e("memory-backend-nope,id=m"),
            "Parameter 'qom-type' does not accept value 'memory-backend-nope'"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,sized=3"),
            "Property 'memory-backend-ram.sized' not found"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,size=0"),
            "property 'size' of memory-backend-ram doesn't take value '0'"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,host-nodes=200000"),
            "Invalid host-nodes value: 200000"
        );
        assert_eq!(
            e("memory-backend-ram,id=1x,size=1M"),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(e(""), "Parameter 'qom-type' is missing");
    }
}
