//! QEMU's JSON `-object` form, `{"qom-type":"memory-backend-ram","id":"m0",...}`: the
//! form libvirt writes for QEMU 6.0 and later, and the arguments of QMP `object-add`.
//! Members are checked the way QEMU's QAPI visitor checks `ObjectOptions`: in schema
//! order (the common backend members, then the kind's own, each alphabetically), each
//! of its JSON type, required ones present, and then none left over.

use serde_json::{Map, Value as Json};

use super::{ObjectSpec, ObjectType, SpecValue};
use crate::context::Affinity;
use crate::error::{Error, Result};
use crate::props::{self, Common, PropType};

/// Parses the JSON text of an `-object` argument.
pub(super) fn parse(text: &str) -> Result<ObjectSpec> {
    match super::qemu_json::parse(text)? {
        Json::Object(map) => ObjectSpec::from_json(map),
        _ => Err(Error::InvalidType {
            prop: "object".into(),
            expected: "object",
        }),
    }
}

fn string(map: &mut Map<String, Json>, name: &'static str) -> Result<Option<String>> {
    match map.remove(name) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidType {
            prop: name.into(),
            expected: "string",
        }),
    }
}

impl ObjectSpec {
    /// An object from JSON members (`qom-type`, `id` and the properties), as
    /// `-object {...}` and QMP `object-add` give them.
    pub fn from_json(mut map: Map<String, Json>) -> Result<ObjectSpec> {
        let type_name = string(&mut map, "qom-type")?;
        // QEMU's visitor takes the type's value before it looks at the id.
        if let Some(t) = type_name.as_deref() {
            if ObjectType::from_qom_type(t).is_none() {
                return Err(Error::BadEnum {
                    prop: "qom-type".into(),
                    value: t.to_string(),
                });
            }
        }
        let id = string(&mut map, "id")?;
        // Type and id first: the members that follow depend on the type.
        let skeleton = ObjectSpec::unchecked_id(type_name, id, Vec::new())?;
        let mut props = Vec::new();
        // Links only need to be strings here; they are resolved when the object is made.
        let any_object = &|_: &str| None;
        match skeleton.ty {
            ObjectType::Backend(kind) => {
                let mut common: Vec<_> = Common::PROPS.iter().collect();
                let mut own: Vec<_> = kind.own_props().iter().collect();
                common.sort_by_key(|p| p.name);
                own.sort_by_key(|p| p.name);
                for p in common.into_iter().chain(own) {
                    match map.remove(p.name) {
                        Some(v) => {
                            if p.ty == PropType::Link {
                                v.as_str().ok_or(Error::InvalidType {
                                    prop: p.name.into(),
                                    expected: "string",
                                })?;
                            } else {
                                props::json::from_json(p.name, p.ty, &v, any_object)?;
                            }
                            props.push((p.name.to_string(), SpecValue::Json(v)));
                        }
                        None if p.required => return Err(Error::Missing(p.name)),
                        None => {}
                    }
                }
            }
            ObjectType::ThreadContext => {
                for a in [Affinity::Cpus, Affinity::Nodes] {
                    if let Some(v) = map.remove(a.name()) {
                        props::json::u16_list(a.name(), &v)?;
                        props.push((a.name().to_string(), SpecValue::Json(v)));
                    }
                }
            }
        }
        if let Some(k) = map.keys().next() {
            return Err(Error::Unexpected(k.clone()));
        }
        skeleton.check_id()?;
        Ok(ObjectSpec { props, ..skeleton })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use crate::props::{MachineDefaults, PropValue};

    #[test]
    fn libvirt_style_json_makes_the_same_backend_as_keyval() {
        let j = ObjectSpec::parse(
            r#"{"qom-type":"memory-backend-file","id":"ram-node0","mem-path":"/tmp/x","share":true,"prealloc":true,"size":1073741824,"host-nodes":[0,2],"policy":"bind"}"#,
        )
        .unwrap();
        let k = ObjectSpec::parse(
            "memory-backend-file,id=ram-node0,mem-path=/tmp/x,share=on,prealloc=on,size=1G,host-nodes=0,host-nodes=2,policy=bind",
        )
        .unwrap();
        assert_eq!(j.ty, ObjectType::Backend(Kind::File));
        let d = MachineDefaults::default();
        let (bj, bk) = (j.to_backend(&d).unwrap(), k.to_backend(&d).unwrap());
        assert_eq!(bj.config(), bk.config());
        assert_eq!(bj.get("size").unwrap(), PropValue::Int(1 << 30));
    }

    #[test]
    fn qapi_checks_with_qemus_words() {
        let e = |t: &str| ObjectSpec::parse(t).unwrap_err().to_string();
        assert_eq!(
            e(r#"{"qom-type":"memory-backend-ram","id":"m"}"#),
            "Parameter 'size' is missing"
        );
        assert_eq!(
            e(r#"{"qom-type":"memory-backend-ram","id":"m","size":"1G"}"#),
            "Parameter 'size' expects uint64"
        );
        assert_eq!(
            e(r#"{"qom-type":"memory-backend-ram","id":"m","size":1,"sized":2}"#),
            "Parameter 'sized' is unexpected"
        );
        assert_eq!(
            e(r#"{"qom-type":"memory-backend-file","id":"m","size":4096}"#),
            "Parameter 'mem-path' is missing"
        );
        assert_eq!(e(r#"{"id":"m"}"#), "Parameter 'qom-type' is missing");
        assert_eq!(
            e(r#"{"qom-type":"thread-context","id":"tc","cpu-affinity":"0"}"#),
            "Invalid parameter type for 'cpu-affinity', expected: array"
        );
    }

    #[test]
    fn thread_context_and_its_link() {
        let tc =
            ObjectSpec::parse(r#"{"qom-type":"thread-context","id":"tc1","node-affinity":[0]}"#)
                .unwrap()
                .to_context()
                .unwrap();
        tc.complete().unwrap();
        let spec = ObjectSpec::parse(
            r#"{"qom-type":"memory-backend-ram","id":"m","size":4096,"prealloc-context":"tc1"}"#,
        )
        .unwrap();
        let d = MachineDefaults::default();
        assert_eq!(
            spec.to_backend(&d).unwrap_err().to_string(),
            "Device 'tc1' not found"
        );
        let b = spec
            .to_backend_with(&d, &|id| {
                (id == "tc1").then(|| crate::props::Lookup::Context(tc.clone()))
            })
            .unwrap();
        assert_eq!(
            b.get("prealloc-context").unwrap().to_string(),
            "/objects/tc1"
        );
    }
}
