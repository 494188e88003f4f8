//! QEMU's `-object` text: `TYPE,id=ID,key=value,...` (keyval syntax: `,,` is a literal
//! comma; repeated `host-nodes=` keys add up to one list).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::numa::NodeSet;
use crate::props::{MachineDefaults, PropType, PropValue};

/// A parsed `-object` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// The backend kind, from the leading type name or `qom-type=`.
    pub kind: Kind,
    /// The object id (`id=`), checked against QEMU's rule ([`valid_id`]).
    pub id: String,
    /// Properties in the order given (without `qom-type` and `id`).
    pub props: Vec<(String, String)>,
}

/// QEMU's rule for object ids: a letter, then letters, digits, `-`, `.`, `_`.
pub fn valid_id(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch))
}

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

impl ObjectSpec {
    /// Parses `memory-backend-ram,id=m0,size=1G` (also `qom-type=...` spelled out).
    pub fn parse(text: &str) -> Result<ObjectSpec> {
        let mut pairs = split_pairs(text)?.into_iter();
        let mut kind_name = None;
        let mut id = None;
        let mut props = Vec::new();
        if let Some((k, None)) = pairs.clone().next() {
            kind_name = Some(k);
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
                "qom-type" => kind_name = Some(v),
                "id" => id = Some(v),
                _ => props.push((k, v)),
            }
        }
        let kind_name = kind_name
            .filter(|k| !k.is_empty())
            .ok_or(Error::Missing("qom-type"))?;
        let kind = Kind::from_qom_type(&kind_name).ok_or_else(|| Error::BadEnum {
            prop: "qom-type".into(),
            value: kind_name.clone(),
        })?;
        let id = id.ok_or(Error::Missing("id"))?;
        if !valid_id(&id) {
            return Err(Error::BadType {
                prop: "id".into(),
                expected: "an identifier",
            });
        }
        Ok(ObjectSpec { kind, id, props })
    }

    /// A configured backend with these properties set (not yet allocated).
    pub fn to_backend(&self, defaults: &MachineDefaults) -> Result<Backend> {
        let mut b = Backend::new(self.kind, self.id.clone(), defaults);
        // keyval lists: repeated keys of a node-list property add up to one list.
        let mut lists: Vec<(&str, NodeSet)> = Vec::new();
        for (k, v) in &self.props {
            if b.prop(k)?.ty == PropType::Nodes {
                match lists.iter_mut().find(|(name, _)| name == k) {
                    Some((_, set)) => set.extend_parse(v)?,
                    None => lists.push((k, NodeSet::parse(v)?)),
                }
            } else {
                b.set_str(k, v)?;
            }
        }
        for (k, set) in lists {
            b.set(k, PropValue::Nodes(set))?;
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_object_syntax() {
        let s = ObjectSpec::parse(
            "memory-backend-file,id=f0,size=1G,mem-path=/tmp/a,,b,host-nodes=0,host-nodes=2",
        )
        .unwrap();
        assert_eq!(s.kind, Kind::File);
        assert_eq!(s.id, "f0");
        assert!(s.props.contains(&("mem-path".into(), "/tmp/a,b".into())));
        let b = s.to_backend(&MachineDefaults::default()).unwrap();
        assert_eq!(
            b.get("host-nodes").unwrap(),
            PropValue::Nodes(NodeSet::parse("0,2").unwrap())
        );
        assert_eq!(b.get("size").unwrap(), PropValue::Int(1 << 30));
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
