//! A backend's settings: the common part and the kind's own, typed, and the property
//! table of each kind. The rows are declared once, in their groups (`props::common`,
//! each kind's file); this is where a kind's list of them is put together.

use std::any::Any;

use super::{Kind, KindConfig};
use crate::props::{Common, MachineDefaults, Prop, PropValue, Settings};

/// A backend's settings: the common part and the kind's own, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Properties every kind has.
    pub common: Common,
    /// The kind's own properties; its variant is the backend's kind.
    pub kind: KindConfig,
}

impl Config {
    /// Every property at its default for `kind`, with the machine-wide defaults.
    pub fn new(kind: Kind, machine: &MachineDefaults) -> Config {
        Config {
            common: Common::defaults(kind.shares_by_default(), machine),
            kind: KindConfig::defaults(kind, machine),
        }
    }

    /// The kind these settings are for.
    pub fn kind(&self) -> Kind {
        self.kind.kind()
    }

    /// Reads a property by name.
    pub fn get(&self, name: &str) -> Option<PropValue> {
        lookup(self.kind(), name).and_then(|p| p.get(self))
    }
}

impl Settings for Config {
    fn common(&self) -> &Common {
        &self.common
    }

    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }

    fn kind_group(&self) -> &dyn Any {
        self.kind.ops()
    }

    fn kind_group_mut(&mut self) -> &mut dyn Any {
        self.kind.ops_mut()
    }

    fn qom_type(&self) -> &'static str {
        self.kind().qom_type()
    }
}

/// The properties of one kind: the common ones, then the kind's own.
pub fn properties(kind: Kind) -> impl Iterator<Item = &'static Prop> {
    Common::PROPS.iter().chain(kind.own_props())
}

/// A property of a kind by name.
pub fn lookup(kind: Kind, name: &str) -> Option<&'static Prop> {
    properties(kind).find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_see_their_own_properties() {
        assert!(lookup(Kind::File, "mem-path").is_some());
        assert!(lookup(Kind::Ram, "mem-path").is_none());
        assert!(lookup(Kind::Memfd, "hugetlbsize").is_some());
        assert!(lookup(Kind::Shm, "hugetlb").is_none());
        assert_eq!(properties(Kind::Ram).count(), 11);
    }

    #[test]
    fn a_kind_property_is_absent_from_other_kinds_configs() {
        let ram = Config::new(Kind::Ram, &MachineDefaults::default());
        let align = lookup(Kind::File, "align").unwrap();
        assert_eq!(align.get(&ram), None);
        let mut ram2 = ram.clone();
        assert!(align.store(&mut ram2, PropValue::Int(4096)).is_err());
        assert_eq!(ram2, ram);
    }

    #[test]
    fn zero_is_refused_where_qemu_refuses_it() {
        let mut c = Config::new(Kind::Ram, &MachineDefaults::default());
        let size = lookup(Kind::Ram, "size").unwrap();
        assert_eq!(
            size.store(&mut c, PropValue::Int(0))
                .unwrap_err()
                .to_string(),
            "property 'size' of memory-backend-ram doesn't take value '0'"
        );
    }

    #[test]
    fn the_minimum_itself_is_taken_and_values_read_back_by_name() {
        let mut c = Config::new(Kind::Ram, &MachineDefaults::default());
        let size = lookup(Kind::Ram, "size").unwrap();
        size.store(&mut c, PropValue::Int(1)).unwrap();
        assert_eq!(c.get("size"), Some(PropValue::Int(1)));
        assert_eq!(c.get("mem-path"), None, "not a ram property");
        assert_eq!(size.description(), "size of the memory in bytes (required)");
    }

    #[test]
    fn memfd_and_shm_share_by_default() {
        let d = MachineDefaults::default();
        assert!(Config::new(Kind::Memfd, &d).common.share);
        assert!(Config::new(Kind::Shm, &d).common.share);
        assert!(!Config::new(Kind::Ram, &d).common.share);
        assert!(!Config::new(Kind::File, &d).common.share);
    }

    #[test]
    fn machine_defaults_seed_merge_dump_prealloc() {
        let d = MachineDefaults {
            merge: false,
            dump: false,
            prealloc: true,
            ..Default::default()
        };
        let c = Config::new(Kind::Ram, &d);
        assert!(!c.common.merge && !c.common.dump && c.common.prealloc);
    }
}
