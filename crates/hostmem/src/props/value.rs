//! Property values: the types a property may have, their text form (QEMU's keyval
//! wording for errors) and the conversion between a typed field and a [`PropValue`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::context::{ContextLink, ThreadContext};
use crate::error::{Error, Result};
use crate::numa::{NodeSet, Policy};
use crate::size::{parse_c_uint, parse_size};

/// QEMU's OnOffAuto (the file backend's `rom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOffAuto {
    /// Forced on.
    On,
    /// Forced off.
    Off,
    /// Decided from other properties.
    #[default]
    Auto,
}

impl OnOffAuto {
    /// The spelling QEMU uses.
    pub fn name(self) -> &'static str {
        match self {
            OnOffAuto::On => "on",
            OnOffAuto::Off => "off",
            OnOffAuto::Auto => "auto",
        }
    }
}

/// A property's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PropType {
    /// Bytes, with QEMU's suffixes in text (`2M`, `1G`).
    Size,
    /// on/off.
    Bool,
    /// An unsigned 32-bit count.
    U32,
    /// A set of NUMA node ids.
    Nodes,
    /// A memory policy name.
    Policy,
    /// A file system path, kept as bytes (not necessarily UTF-8).
    Path,
    /// on/off/auto.
    OnOffAuto,
    /// A link to a thread-context (`prealloc-context`), by id or QOM path.
    Link,
}

impl PropType {
    /// The type name QEMU's qom-list shows.
    pub fn qom_name(self) -> &'static str {
        match self {
            PropType::Size | PropType::U32 | PropType::Nodes => "int",
            PropType::Bool => "bool",
            PropType::Policy => "HostMemPolicy",
            PropType::Path => "string",
            PropType::OnOffAuto => "OnOffAuto",
            PropType::Link => "link<thread-context>",
        }
    }

    /// QEMU's wording for what a typed (QMP) value of this type must be.
    pub fn expected(self) -> &'static str {
        match self {
            PropType::Size => "uint64",
            PropType::Bool => "boolean",
            PropType::U32 => "uint32",
            PropType::Nodes => "a list of node ids",
            PropType::Policy | PropType::OnOffAuto | PropType::Path | PropType::Link => "string",
        }
    }

    /// Parses the text form (`-object` keyval), with QEMU's error wording. A link
    /// names an object: [`PropType::parse_with`] resolves it; here only the empty
    /// link (none) parses.
    pub fn parse(self, prop: &str, text: &str) -> Result<PropValue> {
        self.parse_with(prop, text, &|_| None)
    }

    /// [`PropType::parse`], resolving a link's id or `/objects/ID` path with `objects`.
    pub fn parse_with(self, prop: &str, text: &str, objects: &Resolver<'_>) -> Result<PropValue> {
        let bad = |expected| Error::BadType {
            prop: prop.to_string(),
            expected,
        };
        let bad_enum = || Error::BadEnum {
            prop: prop.to_string(),
            value: text.to_string(),
        };
        match self {
            PropType::Size => parse_size(text)
                .map(PropValue::Int)
                .ok_or(bad("a size value")),
            PropType::Bool => parse_bool(text)
                .map(PropValue::Bool)
                .ok_or(bad("'on' or 'off'")),
            PropType::U32 => {
                let v = parse_c_uint(text).ok_or(bad("a uint64 value"))?;
                u32::try_from(v)
                    .map(|v| PropValue::Int(v.into()))
                    .map_err(|_| bad("uint32_t"))
            }
            PropType::Nodes => Ok(PropValue::Nodes(NodeSet::parse(text)?)),
            PropType::Policy => text
                .parse::<Policy>()
                .map(PropValue::Policy)
                .map_err(|_| bad_enum()),
            PropType::Path => Ok(PropValue::Path(PathBuf::from(text))),
            PropType::OnOffAuto => match text {
                "on" => Ok(PropValue::OnOffAuto(OnOffAuto::On)),
                "off" => Ok(PropValue::OnOffAuto(OnOffAuto::Off)),
                "auto" => Ok(PropValue::OnOffAuto(OnOffAuto::Auto)),
                _ => Err(bad_enum()),
            },
            PropType::Link => resolve_link(prop, text, objects).map(PropValue::Link),
        }
    }
}

/// What an id names among a caller's objects, for resolving links.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Lookup {
    /// A thread-context.
    Context(Arc<ThreadContext>),
    /// An object of another type (a link to it is refused with QEMU's type error).
    Other,
}

/// Finds an object by id; what a caller that holds objects passes to resolve links
/// (QEMU resolves a link's path among all objects).
pub type Resolver<'a> = dyn Fn(&str) -> Option<Lookup> + 'a;

/// A link's text: empty (no link), an id, or a `/objects/ID` path.
fn resolve_link(prop: &str, text: &str, objects: &Resolver<'_>) -> Result<ContextLink> {
    if text.is_empty() {
        return Ok(ContextLink(None));
    }
    let id = text.strip_prefix("/objects/").unwrap_or(text);
    match objects(id) {
        Some(Lookup::Context(c)) => Ok(ContextLink(Some(c))),
        Some(Lookup::Other) => Err(Error::InvalidType {
            prop: prop.to_string(),
            expected: crate::context::QOM_TYPE,
        }),
        None => Err(Error::DeviceNotFound(text.to_string())),
    }
}

/// The boolean spellings QEMU's option parsers accept.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// A property value, typed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PropValue {
    /// A boolean.
    Bool(bool),
    /// A size or count.
    Int(u64),
    /// A path, as the OS gave it (no UTF-8 round trip).
    Path(PathBuf),
    /// A node set.
    Nodes(NodeSet),
    /// A memory policy.
    Policy(Policy),
    /// on/off/auto.
    OnOffAuto(OnOffAuto),
    /// A link to a thread-context, or none.
    Link(ContextLink),
}

impl PropValue {
    /// Whether this is the "not set" value of a required property (0, an empty path).
    pub fn is_unset(&self) -> bool {
        match self {
            PropValue::Int(v) => *v == 0,
            PropValue::Path(p) => p.as_os_str().is_empty(),
            _ => false,
        }
    }
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Bool(b) => f.write_str(if *b { "on" } else { "off" }),
            PropValue::Int(v) => write!(f, "{v}"),
            PropValue::Path(p) => write!(f, "{}", p.display()),
            PropValue::Nodes(n) => write!(f, "{n}"),
            PropValue::Policy(p) => write!(f, "{p}"),
            PropValue::OnOffAuto(o) => f.write_str(o.name()),
            PropValue::Link(l) => write!(f, "{l}"),
        }
    }
}

/// A Rust type a property can have: its [`PropType`] and the conversions both ways.
pub trait Value: Sized {
    /// The property type of fields of this Rust type.
    const TYPE: PropType;
    /// The field as a name/value value.
    fn to_value(&self) -> PropValue;
    /// A name/value value as the field's type; None when the variant does not fit.
    fn from_value(v: PropValue) -> Option<Self>;
}

/// `Value` for a type that one `PropValue` variant holds as it is.
macro_rules! held_as {
    ($(#[$doc:meta])* $t:ty => $ty:ident in $variant:ident) => {
        $(#[$doc])*
        impl Value for $t {
            const TYPE: PropType = PropType::$ty;
            fn to_value(&self) -> PropValue {
                PropValue::$variant(self.clone())
            }
            fn from_value(v: PropValue) -> Option<Self> {
                match v {
                    PropValue::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}

held_as!(bool => Bool in Bool);
held_as!(/// Sizes (bytes).
    u64 => Size in Int);
held_as!(NodeSet => Nodes in Nodes);
held_as!(Policy => Policy in Policy);
held_as!(/// Paths; the empty path means "not set" (QEMU reads an unset string as empty).
    PathBuf => Path in Path);
held_as!(OnOffAuto => OnOffAuto in OnOffAuto);
held_as!(ContextLink => Link in Link);

/// Counts: stored as `Int`, refused when they do not fit.
impl Value for u32 {
    const TYPE: PropType = PropType::U32;
    fn to_value(&self) -> PropValue {
        PropValue::Int((*self).into())
    }
    fn from_value(v: PropValue) -> Option<Self> {
        match v {
            PropValue::Int(i) => u32::try_from(i).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_parse_with_qemu_errors() {
        assert_eq!(
            PropType::Size.parse("size", "1G").unwrap(),
            PropValue::Int(1 << 30)
        );
        assert_eq!(
            PropType::Size
                .parse("size", "lots")
                .unwrap_err()
                .to_string(),
            "Parameter 'size' expects a size value"
        );
        assert_eq!(
            PropType::Policy
                .parse("policy", "weird")
                .unwrap_err()
                .to_string(),
            "Parameter 'policy' does not accept value 'weird'"
        );
        assert_eq!(
            PropType::Bool.parse("merge", "yes").unwrap(),
            PropValue::Bool(true)
        );
        assert!(PropType::Bool.parse("merge", "maybe").is_err());
    }

    #[test]
    fn on_off_auto_and_bool_spellings() {
        for o in [OnOffAuto::On, OnOffAuto::Off, OnOffAuto::Auto] {
            assert_eq!(
                PropType::OnOffAuto.parse("rom", o.name()).unwrap(),
                PropValue::OnOffAuto(o)
            );
        }
        assert!(PropType::OnOffAuto.parse("rom", "maybe").is_err());
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("1"), None);
    }

    #[test]
    fn qom_type_names_and_qapi_wording() {
        let names: Vec<_> = [
            PropType::Size,
            PropType::Bool,
            PropType::U32,
            PropType::Nodes,
            PropType::Policy,
            PropType::Path,
            PropType::OnOffAuto,
            PropType::Link,
        ]
        .iter()
        .map(|t| (t.qom_name(), t.expected()))
        .collect();
        assert_eq!(
            names,
            [
                ("int", "uint64"),
                ("bool", "boolean"),
                ("int", "uint32"),
                ("int", "a list of node ids"),
                ("HostMemPolicy", "string"),
                ("string", "string"),
                ("OnOffAuto", "string"),
                ("link<thread-context>", "string"),
            ]
        );
    }

    #[test]
    fn unset_means_zero_or_an_empty_path() {
        assert!(PropValue::Int(0).is_unset());
        assert!(!PropValue::Int(1).is_unset());
        assert!(PropValue::Path(PathBuf::new()).is_unset());
        assert!(!PropValue::Path(PathBuf::from("/x")).is_unset());
        assert!(!PropValue::Bool(false).is_unset());
    }

    #[test]
    fn u32_refuses_what_does_not_fit() {
        assert_eq!(u32::from_value(PropValue::Int(1 << 32)), None);
        assert_eq!(u32::from_value(PropValue::Int(7)), Some(7));
        assert_eq!(u32::from_value(PropValue::Bool(true)), None);
    }
}
