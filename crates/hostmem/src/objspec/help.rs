//! `-object TYPE,help` and `-object help`: what QEMU prints before exiting 0 instead
//! of making an object. QEMU's layout (`  name=<type>` padded to 24 columns, then
//! ` - ` and the description, lines sorted), hostmem's property table and words.

use super::keyval::{is_help, Opts};
use super::ObjectType;
use crate::context::Affinity;
use crate::kind::Kind;

/// One help line as QEMU's `object_property_help` writes it.
fn line(name: &str, ty: &str, description: &str) -> String {
    let mut s = format!("  {name}=<{ty}>");
    if !description.is_empty() {
        s = format!("{s:<24} - {description}");
    }
    s
}

/// The help QEMU would print for this keyval `-object` text, or None when it asks for
/// none (JSON text never does). Asked by a type `help`/`?` (the types hostmem makes)
/// or by a `help`/`?` key after a type hostmem knows; an ill-formed id is refused
/// first, as in QEMU, so that text gets no help either.
pub fn help(text: &str) -> Option<String> {
    if text.starts_with('{') {
        return None;
    }
    let opts = Opts::parse(text).ok()?;
    let type_name = opts.last("qom-type")?;
    if is_help(type_name) {
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.qom_type()).collect();
        names.push(crate::context::QOM_TYPE);
        names.sort_unstable();
        let list: String = names.iter().map(|n| format!("  {n}\n")).collect();
        return Some(format!("List of user creatable objects:\n{list}"));
    }
    if !opts.wants_help() {
        return None;
    }
    let mut lines: Vec<String> = match ObjectType::from_qom_type(type_name)? {
        ObjectType::Backend(kind) => crate::kind::properties(kind)
            .map(|p| line(p.name, p.ty.qom_name(), p.description()))
            .collect(),
        ObjectType::ThreadContext => [Affinity::Cpus, Affinity::Nodes]
            .iter()
            .map(|a| line(a.name(), "int", ""))
            .collect(),
    };
    lines.sort();
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Some(format!("{type_name} options:\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_question_mark_list_properties_as_qemu_lays_them_out() {
        let h = help("memory-backend-ram,help").unwrap();
        assert!(
            h.starts_with("memory-backend-ram options:\n  dump=<bool>    "),
            "{h}"
        );
        assert!(
            h.contains("\n  size=<int>             - size of the memory"),
            "{h}"
        );
        assert_eq!(help("memory-backend-ram,?"), Some(h.clone()));
        assert_eq!(help("memory-backend-ram,id=m,help=x"), Some(h));
        assert!(help("thread-context,help")
            .unwrap()
            .contains("\n  cpu-affinity=<int>\n"));
        assert!(help("help").unwrap().contains("\n  memory-backend-shm\n"));
        assert!(help("?")
            .unwrap()
            .starts_with("List of user creatable objects:\n"));
    }

    #[test]
    fn no_help_where_qemu_gives_none() {
        assert_eq!(help("memory-backend-ram,id=m,size=1M"), None);
        assert_eq!(help("memory-backend-ram,id=1x,help"), None, "bad id first");
        assert_eq!(help("memory-backend-nope,help"), None, "unknown type");
        assert_eq!(help(r#"{"qom-type":"help"}"#), None);
        assert!(
            help("memory-backend-ram,nohelp").is_some(),
            "help=off is still a key help"
        );
    }
}
