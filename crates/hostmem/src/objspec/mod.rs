//! QEMU's `-object` argument, in both of its forms: keyval text
//! (`memory-backend-ram,id=m0,size=1G`, `keyval`) and JSON
//! (`{"qom-type":"memory-backend-ram","id":"m0","size":1073741824}`, as libvirt writes
//! it; cargo feature `json`). Both give an [`ObjectSpec`]: the object's type, its id and
//! its properties in the order given, still as written; [`ObjectSpec::to_backend`] and
//! [`ObjectSpec::to_context`] type them against the object's property table.

mod help;
#[cfg(feature = "json")]
mod json;
mod keyval;
#[cfg(feature = "json")]
mod qemu_json;

pub use help::help;

/// The id QEMU's option parser takes from keyval text (its first `id`, well-formed or
/// not), None for JSON text or none given: what QEMU checks for a duplicate before it
/// reads anything else of the text.
pub fn keyval_id(text: &str) -> Option<String> {
    if text.starts_with('{') {
        return None;
    }
    keyval::first_id(text)
}

/// One JSON value as QEMU's parser reads it (single quotes, duplicate members
/// refused), for `-object {...}` and QMP input alike.
#[cfg(feature = "json")]
pub fn parse_json(text: &str) -> Result<serde_json::Value> {
    qemu_json::parse(text)
}

use std::sync::Arc;

use crate::backend::Backend;
use crate::context::{Affinity, ThreadContext};
use crate::error::{Error, Result};
use crate::kind::memfd::MemfdConfig;
use crate::kind::Kind;
use crate::numa::NodeSet;
use crate::props::{MachineDefaults, PropType, PropValue, Resolver};

/// What kind of object a spec makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// A memory backend of this kind.
    Backend(Kind),
    /// A `thread-context`.
    ThreadContext,
}

impl ObjectType {
    /// The type named by QEMU's type name (`qom-type`).
    pub fn from_qom_type(name: &str) -> Option<ObjectType> {
        if name == crate::context::QOM_TYPE {
            return Some(ObjectType::ThreadContext);
        }
        Kind::from_qom_type(name).map(ObjectType::Backend)
    }
}

/// A property value as the spec wrote it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SpecValue {
    /// keyval text, typed by the property (`1G`, `on`, `0-3`).
    Text(String),
    /// A JSON value in its QAPI type (a number for a size, true/false, an array).
    #[cfg(feature = "json")]
    Json(serde_json::Value),
}

/// A parsed `-object` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSpec {
    /// The object's type, from the leading type name, `qom-type=` or the JSON member.
    pub ty: ObjectType,
    /// The object id, checked against QEMU's rule ([`valid_id`]).
    pub id: String,
    /// Properties in the order given (without `qom-type` and `id`); of a keyval
    /// key given more than once, only the last value, except for list keys.
    pub props: Vec<(String, SpecValue)>,
    /// QEMU's warnings for deprecated forms (a short-form boolean such as `merge`),
    /// for the caller to print.
    pub warnings: Vec<String>,
}

/// QEMU's rule for object ids: a letter, then letters, digits, `-`, `.`, `_`.
pub fn valid_id(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch))
}

impl ObjectSpec {
    /// Parses an `-object` argument: JSON when its first character is `{` (as in
    /// QEMU, a blank before it makes keyval text), keyval otherwise.
    pub fn parse(text: &str) -> Result<ObjectSpec> {
        if text.starts_with('{') {
            #[cfg(feature = "json")]
            return json::parse(text);
            #[cfg(not(feature = "json"))]
            return Err(Error::Refused(
                "a JSON -object needs hostmem's `json` feature".into(),
            ));
        }
        keyval::parse(text)
    }

    /// Checks what both forms share: a known type and a valid id.
    fn new(
        type_name: Option<String>,
        id: Option<String>,
        props: Vec<(String, SpecValue)>,
    ) -> Result<ObjectSpec> {
        let spec = ObjectSpec::unchecked_id(type_name, id, props)?;
        spec.check_id()?;
        Ok(spec)
    }

    /// A known type and some id: what QEMU's visitor checks first. (For JSON, QEMU
    /// checks the id's form only when it makes the object, after all members.)
    fn unchecked_id(
        type_name: Option<String>,
        id: Option<String>,
        props: Vec<(String, SpecValue)>,
    ) -> Result<ObjectSpec> {
        let type_name = type_name.ok_or(Error::Missing("qom-type"))?;
        let ty = ObjectType::from_qom_type(&type_name).ok_or_else(|| Error::BadEnum {
            prop: "qom-type".into(),
            value: type_name.clone(),
        })?;
        let id = id.ok_or(Error::Missing("id"))?;
        Ok(ObjectSpec {
            ty,
            id,
            props,
            warnings: Vec::new(),
        })
    }

    /// QEMU's rule for the id ([`valid_id`]), in its words.
    fn check_id(&self) -> Result<()> {
        if valid_id(&self.id) {
            return Ok(());
        }
        Err(Error::BadType {
            prop: "id".into(),
            expected: "an identifier",
        })
    }

    /// The backend kind, or an error naming the type this spec makes instead.
    pub fn kind(&self) -> Result<Kind> {
        match self.ty {
            ObjectType::Backend(k) => Ok(k),
            ObjectType::ThreadContext => Err(Error::Refused(format!(
                "object '{}' is a {}, not a memory backend",
                self.id,
                crate::context::QOM_TYPE
            ))),
        }
    }

    /// A configured backend with these properties set (not yet allocated); links
    /// (`prealloc-context`) can name no object.
    pub fn to_backend(&self, defaults: &MachineDefaults) -> Result<Backend> {
        self.to_backend_with(defaults, &|_| None)
    }

    /// [`ObjectSpec::to_backend`], resolving links among `objects`.
    pub fn to_backend_with(
        &self,
        defaults: &MachineDefaults,
        objects: &Resolver<'_>,
    ) -> Result<Backend> {
        let mut b = Backend::new(self.kind()?, self.id.clone(), defaults);
        // keyval lists: repeated keys of a node-list property add up to one list.
        let mut lists: Vec<(&str, NodeSet)> = Vec::new();
        for (k, v) in &self.props {
            let prop = b.prop(k)?;
            let value = match v {
                SpecValue::Text(text) if prop.ty == PropType::Nodes => {
                    PropValue::Nodes(keyval::node_item(k, text)?)
                }
                SpecValue::Text(text) => prop.ty.parse_with(k, text, objects)?,
                #[cfg(feature = "json")]
                SpecValue::Json(j) => crate::props::json::from_json(k, prop.ty, j, objects)?,
            };
            if prop.name == MemfdConfig::HUGETLBSIZE.name && value == PropValue::Int(0) {
                // QEMU's memfd setter refuses 0 whatever `hugetlb` says, in its words.
                return Err(Error::Refused(format!(
                    "Property '{}.{}' doesn't take value '0'",
                    self.kind()?.qom_type(),
                    prop.name
                )));
            }
            match (value, matches!(v, SpecValue::Text(_))) {
                (PropValue::Nodes(set), true) => {
                    match lists.iter_mut().find(|(name, _)| name == k) {
                        Some((_, all)) => *all = all.iter().chain(set.iter()).collect(),
                        None => lists.push((k, set)),
                    }
                }
                (value, _) => b.set(k, value)?,
            }
        }
        for (k, set) in lists {
            b.set(k, PropValue::Nodes(set))?;
        }
        Ok(b)
    }

    /// A thread-context with these properties set (not yet started).
    pub fn to_context(&self) -> Result<Arc<ThreadContext>> {
        if self.ty != ObjectType::ThreadContext {
            return Err(Error::Refused(format!(
                "object '{}' is not a {}",
                self.id,
                crate::context::QOM_TYPE
            )));
        }
        let tc = ThreadContext::new(self.id.clone());
        // keyval lists: repeated keys add up (`cpu-affinity=0-1,cpu-affinity=6-7`).
        let mut lists: Vec<(Affinity, Vec<u16>)> = Vec::new();
        for (k, v) in &self.props {
            let which = Affinity::from_name(k).ok_or_else(|| Error::UnknownProperty {
                kind: crate::context::QOM_TYPE,
                prop: k.clone(),
            })?;
            let ids = match v {
                SpecValue::Text(text) => keyval::u16_item(k, text)?,
                #[cfg(feature = "json")]
                SpecValue::Json(j) => crate::props::json::u16_list(k, j)?,
            };
            match lists.iter_mut().find(|(a, _)| *a == which) {
                Some((_, all)) => all.extend(ids),
                None => lists.push((which, ids)),
            }
        }
        for (which, ids) in lists {
            tc.set_affinity(which, &ids)?;
        }
        Ok(Arc::new(tc))
    }
}
