//! The property table: every property's name, type, which kinds have it, and whether it
//! may change once memory is allocated; plus the typed configuration it fills.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::numa::{NodeSet, Policy};
use crate::size::parse_size;

/// The three backend kinds, by QEMU's type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `memory-backend-ram`: anonymous memory.
    Ram,
    /// `memory-backend-file`: a file or an unlinked temp file in a directory.
    File,
    /// `memory-backend-memfd`: a memfd, optionally hugetlb and sealed.
    Memfd,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ram, Kind::File, Kind::Memfd];

    pub fn qom_type(self) -> &'static str {
        match self {
            Kind::Ram => "memory-backend-ram",
            Kind::File => "memory-backend-file",
            Kind::Memfd => "memory-backend-memfd",
        }
    }

    pub fn from_qom_type(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.qom_type() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qom_type())
    }
}

/// QEMU's OnOffAuto (the file backend's `rom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOffAuto {
    On,
    Off,
    #[default]
    Auto,
}

impl OnOffAuto {
    pub fn name(self) -> &'static str {
        match self {
            OnOffAuto::On => "on",
            OnOffAuto::Off => "off",
            OnOffAuto::Auto => "auto",
        }
    }
}

/// Machine-wide defaults (`-machine mem-merge=,dump-guest-core=`, `-mem-prealloc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineDefaults {
    pub merge: bool,
    pub dump: bool,
    pub prealloc: bool,
}

impl Default for MachineDefaults {
    fn default() -> Self {
        MachineDefaults {
            merge: true,
            dump: true,
            prealloc: false,
        }
    }
}

/// A backend's settings. Kind-specific fields are ignored by other kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub size: Option<u64>,
    pub merge: bool,
    pub dump: bool,
    pub prealloc: bool,
    pub prealloc_threads: u32,
    pub host_nodes: NodeSet,
    pub policy: Policy,
    pub share: bool,
    pub reserve: bool,
    pub mem_path: Option<PathBuf>,
    pub align: u64,
    pub offset: u64,
    pub discard_data: bool,
    pub readonly: bool,
    pub rom: OnOffAuto,
    pub pmem: bool,
    pub hugetlb: bool,
    pub hugetlbsize: u64,
    pub seal: bool,
}

impl Config {
    pub fn new(kind: Kind, defaults: &MachineDefaults) -> Config {
        Config {
            size: None,
            merge: defaults.merge,
            dump: defaults.dump,
            prealloc: defaults.prealloc,
            prealloc_threads: default_threads(),
            host_nodes: NodeSet::new(),
            policy: Policy::Default,
            share: kind == Kind::Memfd,
            reserve: true,
            mem_path: None,
            align: 0,
            offset: 0,
            discard_data: false,
            readonly: false,
            rom: OnOffAuto::Auto,
            pmem: false,
            hugetlb: false,
            hugetlbsize: 0,
            seal: true,
        }
    }
}

/// CPUs this process may run on: the default thread count.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A property's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropType {
    Size,
    Bool,
    U32,
    Nodes,
    Policy,
    Path,
    OnOffAuto,
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
        }
    }

    /// Parses the text form (`-object` keyval), with QEMU's error wording.
    pub fn parse(self, prop: &str, text: &str) -> Result<PropValue> {
        let bad = |expected| Error::BadType {
            prop: prop.to_string(),
            expected,
        };
        match self {
            PropType::Size => parse_size(text)
                .map(PropValue::Int)
                .ok_or(bad("a size value")),
            PropType::Bool => parse_bool(text)
                .map(PropValue::Bool)
                .ok_or(bad("'on' or 'off'")),
            PropType::U32 => text
                .trim()
                .parse::<u32>()
                .map(|v| PropValue::Int(v as u64))
                .map_err(|_| bad("uint32_t")),
            PropType::Nodes => Ok(PropValue::Nodes(NodeSet::parse(text)?)),
            PropType::Policy => {
                text.parse::<Policy>()
                    .map(PropValue::Policy)
                    .map_err(|_| Error::BadEnum {
                        prop: prop.to_string(),
                        value: text.to_string(),
                    })
            }
            PropType::Path => Ok(PropValue::Str(text.to_string())),
            PropType::OnOffAuto => match text {
                "on" => Ok(PropValue::OnOffAuto(OnOffAuto::On)),
                "off" => Ok(PropValue::OnOffAuto(OnOffAuto::Off)),
                "auto" => Ok(PropValue::OnOffAuto(OnOffAuto::Auto)),
                _ => Err(Error::BadEnum {
                    prop: prop.to_string(),
                    value: text.to_string(),
                }),
            },
        }
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
pub enum PropValue {
    Bool(bool),
    Int(u64),
    Str(String),
    Nodes(NodeSet),
    Policy(Policy),
    OnOffAuto(OnOffAuto),
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Bool(b) => f.write_str(if *b { "on" } else { "off" }),
            PropValue::Int(v) => write!(f, "{v}"),
            PropValue::Str(s) => f.write_str(s),
            PropValue::Nodes(n) => write!(f, "{n}"),
            PropValue::Policy(p) => write!(f, "{p}"),
            PropValue::OnOffAuto(o) => f.write_str(o.name()),
        }
    }
}

/// What happens when a property is set on a live (allocated) backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Refused: the memory would have to be remade.
    Fixed,
    /// Takes effect at once (merge, dump, prealloc off→on, ...).
    Immediate,
    /// Placement: refused alone, changed with a rebind of policy and nodes together.
    Rebind,
}

/// One row of the property table.
#[derive(Debug, Clone, Copy)]
pub struct PropInfo {
    pub name: &'static str,
    pub ty: PropType,
    pub live: Live,
    /// The only kind that has it; None = every kind.
    pub only: Option<Kind>,
    pub doc: &'static str,
}

const fn p(
    name: &'static str,
    ty: PropType,
    live: Live,
    only: Option<Kind>,
    doc: &'static str,
) -> PropInfo {
    PropInfo {
        name,
        ty,
        live,
        only,
        doc,
    }
}

/// Every property, in the order QEMU lists them.
pub const PROPERTIES: &[PropInfo] = &[
    p(
        "share",
        PropType::Bool,
        Live::Fixed,
        None,
        "map shared (visible to other mappings of the memory)",
    ),
    p(
        "size",
        PropType::Size,
        Live::Fixed,
        None,
        "size of the memory",
    ),
    p(
        "dump",
        PropType::Bool,
        Live::Immediate,
        None,
        "include in core dumps",
    ),
    p(
        "prealloc-threads",
        PropType::U32,
        Live::Immediate,
        None,
        "threads that preallocate",
    ),
    p(
        "policy",
        PropType::Policy,
        Live::Rebind,
        None,
        "NUMA memory policy",
    ),
    p(
        "prealloc",
        PropType::Bool,
        Live::Immediate,
        None,
        "fault all memory in up front",
    ),
    p(
        "reserve",
        PropType::Bool,
        Live::Fixed,
        None,
        "reserve swap space / huge pages",
    ),
    p(
        "host-nodes",
        PropType::Nodes,
        Live::Rebind,
        None,
        "NUMA nodes of the policy",
    ),
    p(
        "merge",
        PropType::Bool,
        Live::Immediate,
        None,
        "let KSM merge identical pages",
    ),
    p(
        "readonly",
        PropType::Bool,
        Live::Fixed,
        Some(Kind::File),
        "open and map the file read-only",
    ),
    p(
        "align",
        PropType::Size,
        Live::Fixed,
        Some(Kind::File),
        "alignment of the mapping",
    ),
    p(
        "offset",
        PropType::Size,
        Live::Fixed,
        Some(Kind::File),
        "offset into the file",
    ),
    p(
        "pmem",
        PropType::Bool,
        Live::Fixed,
        Some(Kind::File),
        "persistent memory: map with MAP_SYNC",
    ),
    p(
        "mem-path",
        PropType::Path,
        Live::Fixed,
        Some(Kind::File),
        "file, or directory for a temp file",
    ),
    p(
        "discard-data",
        PropType::Bool,
        Live::Immediate,
        Some(Kind::File),
        "drop the file's data on delete",
    ),
    p(
        "rom",
        PropType::OnOffAuto,
        Live::Fixed,
        Some(Kind::File),
        "guest sees the memory as ROM",
    ),
    p(
        "hugetlb",
        PropType::Bool,
        Live::Fixed,
        Some(Kind::Memfd),
        "use huge pages",
    ),
    p(
        "seal",
        PropType::Bool,
        Live::Fixed,
        Some(Kind::Memfd),
        "seal the memfd against resizing",
    ),
    p(
        "hugetlbsize",
        PropType::Size,
        Live::Fixed,
        Some(Kind::Memfd),
        "huge page size (0 = default)",
    ),
];

/// The properties of one kind.
pub fn properties(kind: Kind) -> impl Iterator<Item = &'static PropInfo> {
    PROPERTIES
        .iter()
        .filter(move |p| p.only.is_none_or(|k| k == kind))
}

/// A property of a kind by name.
pub fn lookup(kind: Kind, name: &str) -> Option<&'static PropInfo> {
    properties(kind).find(|p| p.name == name)
}

impl Config {
    /// Reads a property.
    pub fn get(&self, name: &str) -> Option<PropValue> {
        use PropValue::*;
        Some(match name {
            "share" => Bool(self.share),
            "size" => Int(self.size.unwrap_or(0)),
            "dump" => Bool(self.dump),
            "prealloc-threads" => Int(self.prealloc_threads as u64),
            "policy" => Policy(self.policy),
            "prealloc" => Bool(self.prealloc),
            "reserve" => Bool(self.reserve),
            "host-nodes" => Nodes(self.host_nodes.clone()),
            "merge" => Bool(self.merge),
            "readonly" => Bool(self.readonly),
            "align" => Int(self.align),
            "offset" => Int(self.offset),
            "pmem" => Bool(self.pmem),
            "mem-path" => Str(self
                .mem_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()),
            "discard-data" => Bool(self.discard_data),
            "rom" => OnOffAuto(self.rom),
            "hugetlb" => Bool(self.hugetlb),
            "seal" => Bool(self.seal),
            "hugetlbsize" => Int(self.hugetlbsize),
            _ => return None,
        })
    }

    /// Stores a value already checked against the property's type and range.
    pub(crate) fn store(&mut self, kind: Kind, info: &PropInfo, value: PropValue) -> Result<()> {
        let mismatch = || Error::BadType {
            prop: info.name.to_string(),
            expected: expected_of(info.ty),
        };
        match (info.name, value) {
            ("size", PropValue::Int(0)) | ("prealloc-threads", PropValue::Int(0)) => {
                return Err(Error::ZeroValue {
                    prop: info.name,
                    kind: kind.qom_type(),
                    value: "0".into(),
                })
            }
            ("size", PropValue::Int(v)) => self.size = Some(v),
            ("prealloc-threads", PropValue::Int(v)) => {
                self.prealloc_threads = u32::try_from(v).map_err(|_| mismatch())?
            }
            ("align", PropValue::Int(v)) => self.align = v,
            ("offset", PropValue::Int(v)) => self.offset = v,
            ("hugetlbsize", PropValue::Int(v)) => self.hugetlbsize = v,
            ("share", PropValue::Bool(b)) => self.share = b,
            ("dump", PropValue::Bool(b)) => self.dump = b,
            ("prealloc", PropValue::Bool(b)) => self.prealloc = b,
            ("reserve", PropValue::Bool(b)) => self.reserve = b,
            ("merge", PropValue::Bool(b)) => self.merge = b,
            ("readonly", PropValue::Bool(b)) => self.readonly = b,
            ("pmem", PropValue::Bool(b)) => self.pmem = b,
            ("discard-data", PropValue::Bool(b)) => self.discard_data = b,
            ("hugetlb", PropValue::Bool(b)) => self.hugetlb = b,
            ("seal", PropValue::Bool(b)) => self.seal = b,
            ("policy", PropValue::Policy(p)) => self.policy = p,
            ("host-nodes", PropValue::Nodes(n)) => self.host_nodes = n,
            ("mem-path", PropValue::Str(s)) => self.mem_path = Some(PathBuf::from(s)),
            ("rom", PropValue::OnOffAuto(o)) => self.rom = o,
            _ => return Err(mismatch()),
        }
        Ok(())
    }
}

/// QEMU's wording for what a type expects.
pub fn expected_of(ty: PropType) -> &'static str {
    match ty {
        PropType::Size => "uint64",
        PropType::Bool => "boolean",
        PropType::U32 => "uint32",
        PropType::Nodes => "a list of node ids",
        PropType::Policy | PropType::OnOffAuto | PropType::Path => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_see_their_own_properties() {
        assert!(lookup(Kind::File, "mem-path").is_some());
        assert!(lookup(Kind::Ram, "mem-path").is_none());
        assert!(lookup(Kind::Memfd, "hugetlbsize").is_some());
        assert_eq!(properties(Kind::Ram).count(), 9);
    }

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
    fn memfd_shares_by_default() {
        let d = MachineDefaults::default();
        assert!(Config::new(Kind::Memfd, &d).share);
        assert!(!Config::new(Kind::Ram, &d).share);
    }
}
