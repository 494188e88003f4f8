//! QEMU's `-object` keyval text, read as QEMU 10 reads it: its option parser
//! (util/qemu-option.c) splits `TYPE,id=ID,key=value,...`, its option visitor
//! (qapi/opts-visitor.c) types the values. So: `,,` is a literal comma; a trailing
//! comma ends nothing; a bare key is a deprecated short-form boolean (`merge` is
//! merge=on, `nodump` is dump=off, a bare `id` is the id "on"), with QEMU's warning; the
//! first `id` is the object's id and later ones are never looked at; a repeated key
//! keeps only its last value (earlier ones are not even parsed), except list keys
//! (`host-nodes`, `cpu-affinity`), whose repeats add up; `help` or `?` asks for help.

use super::{ObjectSpec, ObjectType, SpecValue};
use crate::context::Affinity;
use crate::error::{Error, Result};
use crate::kind::file::FileConfig;
use crate::kind::memfd::MemfdConfig;
use crate::numa::NodeSet;
use crate::props::{Common, PropType};
use crate::size::parse_c_uint_range;

/// One `name=value` item as QEMU's `get_opt_name_value` splits it.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    name: String,
    value: String,
    /// A short-form boolean: `Some("")` for `key` (on), `Some("no")` for `nokey` (off).
    flag: Option<&'static str>,
}

/// A value up to the next single comma, `,,` read as `,`; and where it ends.
fn opt_value(p: &str) -> (String, usize) {
    let b = p.as_bytes();
    let mut out = String::new();
    let mut start = 0;
    loop {
        let off = b[start..]
            .iter()
            .position(|&c| c == b',')
            .map_or(b.len(), |x| start + x);
        if off < b.len() && b.get(off + 1) == Some(&b',') {
            out.push_str(&p[start..=off]);
            start = off + 2;
        } else {
            out.push_str(&p[start..off]);
            return (out, off);
        }
    }
}

/// The first item of `p` and the rest; `implied` names a first item without `=`
/// (QEMU's implied `qom-type`).
fn next_item<'a>(p: &'a str, implied: Option<&str>) -> (Item, &'a str) {
    let len = p.find(['=', ',']).unwrap_or(p.len());
    let (item, end) = if p.as_bytes().get(len) == Some(&b'=') {
        let (value, end) = opt_value(&p[len + 1..]);
        let name = p[..len].to_string();
        let item = Item {
            name,
            value,
            flag: None,
        };
        (item, len + 1 + end)
    } else if let Some(first) = implied {
        let (value, end) = opt_value(p);
        let name = first.to_string();
        let item = Item {
            name,
            value,
            flag: None,
        };
        (item, end)
    } else {
        let name = &p[..len];
        let (name, value, prefix) = match name.strip_prefix("no") {
            Some(n) => (n, "off", "no"),
            None => (name, "on", ""),
        };
        let item = Item {
            name: name.to_string(),
            value: value.to_string(),
            flag: Some(prefix),
        };
        (item, len)
    };
    let rest = &p[end..];
    (item, rest.strip_prefix(',').unwrap_or(rest))
}

/// `help` or `?`: what asks QEMU for help.
pub(super) fn is_help(name: &str) -> bool {
    name == "help" || name == "?"
}

/// QEMU's deprecation warning for a short-form boolean.
fn flag_warning(item: &Item, prefix: &str) -> String {
    let instead = if item.name == "delay" {
        format!("nodelay={}", if prefix.is_empty() { "off" } else { "on" })
    } else {
        format!("{}={}", item.name, item.value)
    };
    format!(
        "short-form boolean option '{prefix}{}' deprecated\nPlease use {instead} instead",
        item.name
    )
}

/// keyval text split as QEMU's option parser leaves it for the visitor.
#[derive(Debug, Clone)]
pub(super) struct Opts {
    /// Every item but `id`, in order.
    items: Vec<Item>,
    /// The first `id` (read without the implied name, as QEMU's `opts_parse_id`).
    id: Option<String>,
    /// Deprecation warnings, QEMU's text.
    warnings: Vec<String>,
}

/// The first `id` item, read without the implied name (QEMU's `opts_parse_id`).
pub(super) fn first_id(text: &str) -> Option<String> {
    let mut p = text;
    while !p.is_empty() {
        let (item, rest) = next_item(p, None);
        if item.name == "id" {
            return Some(item.value);
        }
        p = rest;
    }
    None
}

impl Opts {
    /// Splits `text`; refuses only an ill-formed id (what QEMU checks first).
    pub(super) fn parse(text: &str) -> Result<Opts> {
        let id = first_id(text);
        if id.as_deref().is_some_and(|id| !super::valid_id(id)) {
            return Err(Error::BadType {
                prop: "id".into(),
                expected: "an identifier",
            });
        }
        let (mut items, mut warnings) = (Vec::new(), Vec::new());
        let mut implied = Some("qom-type");
        let mut p = text;
        while !p.is_empty() {
            let (item, rest) = next_item(p, implied);
            implied = None;
            p = rest;
            if let Some(prefix) = item.flag {
                if !(prefix.is_empty() && is_help(&item.name)) {
                    warnings.push(flag_warning(&item, prefix));
                }
            }
            if item.name != "id" {
                items.push(item);
            }
        }
        Ok(Opts {
            items,
            id,
            warnings,
        })
    }

    /// The last value of a key (what QEMU's visitor reads for a scalar).
    pub(super) fn last(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|i| i.name == name)
            .map(|i| i.value.as_str())
    }

    /// Whether an item asks for help (`help`, `?`, also `help=x`).
    pub(super) fn wants_help(&self) -> bool {
        self.items.iter().any(|i| is_help(&i.name))
    }
}

/// QAPI's member order (qapi/qom.json: MemoryBackendProperties, then the kind's
/// own, then ThreadContextProperties): the order QEMU's visitor types them in, so the
/// first bad value named is the one QEMU names.
const QAPI_ORDER: &[&str] = &[
    Common::DUMP.name,
    Common::HOST_NODES.name,
    Common::MERGE.name,
    Common::POLICY.name,
    Common::PREALLOC.name,
    Common::PREALLOC_THREADS.name,
    Common::PREALLOC_CONTEXT.name,
    Common::SHARE.name,
    Common::RESERVE.name,
    Common::SIZE.name,
    Common::X_USE_CANONICAL_PATH.name,
    FileConfig::ALIGN.name,
    FileConfig::OFFSET.name,
    FileConfig::DISCARD_DATA.name,
    FileConfig::MEM_PATH.name,
    FileConfig::PMEM.name,
    FileConfig::READONLY.name,
    FileConfig::ROM.name,
    MemfdConfig::HUGETLB.name,
    MemfdConfig::HUGETLBSIZE.name,
    MemfdConfig::SEAL.name,
    "cpu-affinity",
    "node-affinity",
];

/// The type of property `name` of objects of type `ty` (None: no such property);
/// a thread-context's affinities are node lists in all but name.
fn prop_type(ty: ObjectType, name: &str) -> Option<PropType> {
    match ty {
        ObjectType::Backend(kind) => crate::kind::lookup(kind, name).map(|p| p.ty),
        ObjectType::ThreadContext => Affinity::from_name(name).map(|_| PropType::Nodes),
    }
}

/// Parses `memory-backend-ram,id=m0,size=1G` (also `qom-type=...` spelled out), and
/// checks it as QEMU's option visitor does: every member typed in schema order,
/// required ones present, then no unknown key.
pub(super) fn parse(text: &str) -> Result<ObjectSpec> {
    let opts = Opts::parse(text)?;
    let type_name = opts.last("qom-type").map(str::to_string);
    if type_name.is_none() {
        return Err(Error::Missing("qom-type"));
    }
    let skeleton = ObjectSpec::new(type_name, opts.id.clone(), Vec::new())?;
    let mut props: Vec<(String, SpecValue)> = Vec::new();
    let mut unknown = None;
    for (i, item) in opts.items.iter().enumerate() {
        if item.name == "qom-type" {
            continue;
        }
        let Some(ty) = prop_type(skeleton.ty, &item.name) else {
            unknown.get_or_insert(&item.name);
            continue;
        };
        // A scalar's last value is the one QEMU reads; earlier ones are never parsed.
        let last = !opts.items[i + 1..].iter().any(|j| j.name == item.name);
        if ty == PropType::Nodes || last {
            props.push((item.name.clone(), SpecValue::Text(item.value.clone())));
        }
    }
    let rank = |name: &str| QAPI_ORDER.iter().position(|n| *n == name);
    props.sort_by_key(|(name, _)| rank(name));
    // The visitor's pass, member by member in schema order: each value typed (node
    // ids past the limit and zeros are the setters' to refuse, later, as in QEMU), a
    // required member missing where the schema has it.
    for name in QAPI_ORDER {
        let Some(ty) = prop_type(skeleton.ty, name) else {
            continue;
        };
        let mut given = props.iter().filter(|(n, _)| n == name).peekable();
        if let (None, ObjectType::Backend(kind)) = (given.peek(), skeleton.ty) {
            if let Some(p) = crate::kind::lookup(kind, name).filter(|p| p.required) {
                return Err(Error::Missing(p.name));
            }
        }
        for (_, v) in given {
            #[cfg_attr(not(feature = "json"), allow(irrefutable_let_patterns))]
            let SpecValue::Text(text) = v
            else {
                continue;
            };
            match (skeleton.ty, ty) {
                (ObjectType::ThreadContext, _) | (_, PropType::Nodes) => {
                    u16_item(name, text)?;
                }
                (_, PropType::Link) => {}
                _ => {
                    ty.parse(name, text)?;
                }
            }
        }
    }
    if let Some(name) = unknown {
        return Err(Error::Refused(format!("Invalid parameter '{name}'")));
    }
    Ok(ObjectSpec {
        props,
        warnings: opts.warnings,
        ..skeleton
    })
}

/// One `host-nodes=` value: an id or a range, as QEMU's option visitor reads each
/// repeat of the key (ids past the kernel's limit refused as QEMU's setter does).
pub(super) fn node_item(prop: &str, text: &str) -> Result<NodeSet> {
    let mut set = NodeSet::new();
    for id in u16_item(prop, text)? {
        set.insert(id.into())?;
    }
    Ok(set)
}

/// One value of a keyval uint16 list key (`cpu-affinity=0-3`): an id or a range, as
/// QEMU's option visitor reads it.
pub(super) fn u16_item(prop: &str, text: &str) -> Result<Vec<u16>> {
    let (lo, hi) = parse_c_uint_range(text).ok_or_else(|| Error::BadType {
        prop: prop.to_string(),
        expected: "a uint64 value or range",
    })?;
    (lo..=hi)
        .map(|v| {
            u16::try_from(v).map_err(|_| Error::BadType {
                prop: prop.to_string(),
                expected: "uint16_t",
            })
        })
        .collect()
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
            e("memory-backend-ram,id=m,sized=3,size=1M"),
            "Invalid parameter 'sized'"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,size=0"),
            "property 'size' of memory-backend-ram doesn't take value '0'"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,size=1M,host-nodes=2000"),
            "Invalid host-nodes value: 2000"
        );
        assert_eq!(
            e("memory-backend-ram,id=m,size=1M,host-nodes=200000"),
            "Parameter 'host-nodes' expects uint16_t"
        );
        assert_eq!(
            e("memory-backend-ram,id=1x,size=1M"),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(e(""), "Parameter 'qom-type' is missing");
    }
}
