//! A whole QEMU command line, reduced to its memory part: the `-object`s
//! (memory-backend-* and thread-context, keyval or JSON), `-m`, `-mem-path`,
//! `-mem-prealloc`, `-machine ...,memory-backend=,mem-merge=,dump-guest-core=` and
//! `-numa node,memdev=`. From those it builds exactly the backends QEMU 10 would —
//! including the implicit `pc.ram` of a plain `-m` — with QEMU's own checks and
//! messages for the combinations it refuses, and says which options it ignored.

use hostmem::props::{parse_bool, Lookup};
use hostmem::size::parse_size;
use hostmem::{MachineDefaults, ObjectSpec};

/// QEMU's options that take no argument (everything else takes one).
const FLAGS: &[&str] = &[
    "-S",
    "-s",
    "-nodefaults",
    "-no-user-config",
    "-no-shutdown",
    "-no-reboot",
    "-enable-kvm",
    "-nographic",
    "-daemonize",
    "-snapshot",
    "-mem-prealloc",
    "-no-hpet",
    "-no-acpi",
    "-full-screen",
    "-preconfig",
    "-only-migratable",
    "-usb",
    "-no-fd-bootchk",
    "-win2k-hack",
    "-rtc-td-hack",
    "-no-kvm-pit-reinjection",
    "-enable-fips",
    "-version",
    "-help",
    "-h",
];

/// QEMU's default RAM size for x86 machines when `-m` is not given.
const DEFAULT_RAM: u64 = 128 << 20;

/// The memory part of a QEMU command line.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPart {
    /// The -object arguments for memory backends and thread-contexts, in order, plus
    /// the implicit backend QEMU makes for a plain `-m`.
    pub objects: Vec<String>,
    /// `-machine mem-merge=/dump-guest-core=` and `-mem-prealloc`.
    pub defaults: MachineDefaults,
    /// Options (with their arguments) that have nothing to do with memory.
    pub ignored: Vec<String>,
}

/// Splits a command-line file: one argument per line when a line holds a bare JSON
/// object (`{"qom-type":...}` unquoted), shell-quoted otherwise (libvirt's `.args`
/// files: `\` continuations, quoted JSON, any line breaks). Leading `NAME=value`
/// environment words are dropped.
pub fn split_file(text: &str) -> Result<Vec<String>, String> {
    let words = if text.lines().any(|l| l.trim_start().starts_with('{')) {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        shlex::split(&text.replace("\\\n", " "))
            .ok_or_else(|| "unbalanced quotes in the command line".to_string())?
    };
    let is_env = |w: &String| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && !k.starts_with('-')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    Ok(words.into_iter().skip_while(is_env).collect())
}

/// A `-opt value` pair: QEMU also spells options with two dashes.
fn option_name(word: &str) -> Option<String> {
    let w = word
        .strip_prefix("--")
        .map_or(word.to_string(), |r| format!("-{r}"));
    w.starts_with('-').then_some(w)
}

/// `key=value` items of a QEMU option argument; a leading item without `=` is the
/// option's implied first key (`-m 1G`, `-machine q35`, `-numa node`).
fn items(arg: &str) -> Vec<(Option<&str>, &str)> {
    arg.split(',')
        .map(|it| match it.split_once('=') {
            Some((k, v)) => (Some(k), v),
            None => (None, it),
        })
        .collect()
}

/// `-m` sizes: a bare number is MiB, suffixes as QEMU's.
fn ram_size(text: &str) -> Result<u64, String> {
    let bad = || format!("-m {text}: Parameter 'size' expects a size value");
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(bad);
    }
    parse_size(text).ok_or_else(bad)
}

#[derive(Default)]
struct Raw {
    objects: Vec<String>,
    ram: Option<u64>,
    mem_path: Option<String>,
    prealloc: bool,
    machine_type: Option<String>,
    machine_backend: Option<String>,
    merge: Option<bool>,
    dump: Option<bool>,
    memdevs: Vec<String>,
    ignored: Vec<String>,
}

fn flag(opt: &str, k: &str, v: &str) -> Result<bool, String> {
    parse_bool(v).ok_or_else(|| format!("{opt}: Parameter '{k}' expects 'on' or 'off'"))
}

fn scan(args: &[String]) -> Result<Raw, String> {
    let mut raw = Raw::default();
    // The program itself may lead (`qemu-system-x86_64 -m 1G ...`).
    let mut it = args
        .iter()
        .skip_while(|a| option_name(a).is_none())
        .peekable();
    while let Some(word) = it.next() {
        let Some(opt) = option_name(word) else {
            raw.ignored.push(word.clone());
            continue;
        };
        if FLAGS.contains(&opt.as_str()) {
            if opt == "-mem-prealloc" {
                raw.prealloc = true;
            } else {
                raw.ignored.push(opt);
            }
            continue;
        }
        let arg = it
            .next()
            .ok_or_else(|| format!("{opt}: requires an argument"))?
            .clone();
        match opt.as_str() {
            "-object" if is_memory_object(&arg) => raw.objects.push(arg),
            "-m" => {
                for (k, v) in items(&arg) {
                    match k {
                        None | Some("size") => raw.ram = Some(ram_size(v)?),
                        _ => {} // slots, maxmem: hotplug room, not memory now
                    }
                }
            }
            "-mem-path" => raw.mem_path = Some(arg),
            "-machine" | "-M" => {
                for (k, v) in items(&arg) {
                    match k {
                        None | Some("type") => raw.machine_type = Some(v.to_string()),
                        Some("memory-backend") => raw.machine_backend = Some(v.to_string()),
                        Some("mem-merge") => raw.merge = Some(flag(&opt, "mem-merge", v)?),
                        Some("dump-guest-core") => {
                            raw.dump = Some(flag(&opt, "dump-guest-core", v)?)
                        }
                        _ => {}
                    }
                }
            }
            "-numa" => {
                let its = items(&arg);
                if its
                    .first()
                    .is_some_and(|(k, v)| k.is_none() && *v == "node")
                    || its.iter().any(|(k, v)| *k == Some("type") && *v == "node")
                {
                    for (k, v) in its {
                        match k {
                            Some("memdev") => raw.memdevs.push(v.to_string()),
                            Some("mem") => {
                                return Err(format!(
                                    "-numa {arg}: Parameter -numa node,mem is not supported by this machine type"
                                ))
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => raw.ignored.push(format!("{opt} {arg}")),
        }
    }
    Ok(raw)
}

/// Whether an -object argument makes memory (a backend or a thread-context).
fn is_memory_object(arg: &str) -> bool {
    let t = arg.trim_start();
    let ty = if t.starts_with('{') {
        serde_json::from_str::<serde_json::Value>(t)
            .ok()
            .and_then(|v| v.get("qom-type")?.as_str().map(str::to_string))
            .unwrap_or_default()
    } else {
        let first = t.split(',').next().unwrap_or("");
        match first.split_once('=') {
            Some(("qom-type", v)) => v.to_string(),
            Some(_) => items(t)
                .into_iter()
                .find(|(k, _)| *k == Some("qom-type"))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            None => first.to_string(),
        }
    };
    ty.starts_with("memory-backend-") || ty == "thread-context"
}

/// The memory part of `args` (a QEMU command line, with or without the program), or
/// QEMU's error for a memory setup it refuses.
pub fn memory_part(args: &[String]) -> Result<MemoryPart, String> {
    let raw = scan(args)?;
    let defaults = MachineDefaults {
        merge: raw.merge.unwrap_or(true),
        dump: raw.dump.unwrap_or(true),
        prealloc: raw.prealloc,
        ..Default::default()
    };
    // Sizes and ids of the backends given, to check what QEMU checks; links to the
    // line's thread-contexts resolve (the contexts are not started for this).
    let specs = raw
        .objects
        .iter()
        .map(|o| ObjectSpec::parse(o).map_err(|e| format!("-object {o}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let contexts: Vec<_> = specs.iter().filter_map(|s| s.to_context().ok()).collect();
    let find = |id: &str| {
        contexts
            .iter()
            .find(|c| c.id() == id)
            .map(|c| Lookup::Context(c.clone()))
    };
    let mut sizes: Vec<(String, u64)> = Vec::new();
    for (o, spec) in raw.objects.iter().zip(&specs) {
        if spec.kind().is_ok() {
            // QEMU makes the objects before it checks the machine's memory.
            let b = spec
                .to_backend_with(&defaults, &find)
                .map_err(|e| format!("-object {o}: {e}"))?;
            sizes.push((spec.id.clone(), b.size()));
        }
    }
    let size_of = |id: &str| sizes.iter().find(|(i, _)| i == id).map(|(_, s)| *s);
    let mut objects = raw.objects.clone();
    if let Some(id) = &raw.machine_backend {
        let size = size_of(id).ok_or_else(|| format!("Memory backend '{id}' not found"))?;
        if raw.ram.is_some_and(|r| r != size) {
            return Err("Machine memory size does not match the size of the memory backend".into());
        }
    } else if !raw.memdevs.is_empty() {
        let mut total = 0u64;
        for m in &raw.memdevs {
            let size = size_of(m)
                .ok_or_else(|| format!("-numa node,memdev={m}: memdev={m} is ambiguous"))?;
            total = total.saturating_add(size);
        }
        let ram = raw.ram.unwrap_or(DEFAULT_RAM);
        if total != ram {
            return Err(format!(
                "total memory for NUMA nodes ({total:#x}) should equal RAM size ({ram:#x})"
            ));
        }
    } else if raw.machine_type.as_deref() != Some("none") {
        // QEMU's implicit RAM backend, named by the machine's default RAM id.
        let size = raw.ram.unwrap_or(DEFAULT_RAM);
        objects.push(match &raw.mem_path {
            Some(p) => format!(
                "memory-backend-file,id=pc.ram,size={size},mem-path={},x-use-canonical-path-for-ramblock-id=off",
                p.replace(',', ",,")
            ),
            None => format!(
                "memory-backend-ram,id=pc.ram,size={size},x-use-canonical-path-for-ramblock-id=off"
            ),
        });
    }
    Ok(MemoryPart {
        objects,
        defaults,
        ignored: raw.ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(line: &str) -> Result<MemoryPart, String> {
        memory_part(&split_file(line).unwrap())
    }

    #[test]
    fn a_plain_m_makes_qemus_pc_ram() {
        let p = part("qemu-system-x86_64 -m 1000 -nodefaults -S -display none\n").unwrap();
        assert_eq!(
            p.objects,
            ["memory-backend-ram,id=pc.ram,size=1048576000,x-use-canonical-path-for-ramblock-id=off"]
        );
        let p =
            part("-m size=256M,slots=2,maxmem=1G -mem-path /dev/hugepages -mem-prealloc").unwrap();
        assert!(p.objects[0]
            .starts_with("memory-backend-file,id=pc.ram,size=268435456,mem-path=/dev/hugepages"));
        assert!(p.defaults.prealloc);
        assert_eq!(
            part("-cpu host").unwrap().objects[0],
            "memory-backend-ram,id=pc.ram,size=134217728,x-use-canonical-path-for-ramblock-id=off"
        );
    }

    #[test]
    fn libvirt_args_files_parse_with_env_continuations_and_json() {
        let text = "LC_ALL=C \\\nPATH=/bin \\\n/usr/bin/qemu-system-x86_64 \\\n-name guest=g,debug-threads=on \\\n-machine pc-q35-10.0,usb=off,mem-merge=off \\\n-m size=2097152k \\\n-object '{\"qom-type\":\"thread-context\",\"id\":\"tc-ram-node0\",\"node-affinity\":[0]}' \\\n-object '{\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node0\",\"size\":2147483648,\"prealloc-context\":\"tc-ram-node0\"}' \\\n-numa node,nodeid=0,cpus=0-1,memdev=ram-node0 \\\n-device virtio-net,netdev=n0\n";
        let p = part(text).unwrap();
        assert_eq!(p.objects.len(), 2, "{:?}", p.objects);
        assert!(!p.defaults.merge);
        assert!(p.ignored.iter().any(|i| i.starts_with("-device")));
        assert!(p.ignored.iter().any(|i| i.starts_with("-name")));
    }

    #[test]
    fn qemus_own_refusals() {
        assert_eq!(
            part("-m 256M -object memory-backend-ram,id=r0,size=128M -numa node,memdev=r0")
                .unwrap_err(),
            "total memory for NUMA nodes (0x8000000) should equal RAM size (0x10000000)"
        );
        assert_eq!(
            part("-m 256M -numa node,memdev=nope").unwrap_err(),
            "-numa node,memdev=nope: memdev=nope is ambiguous"
        );
        assert_eq!(
            part(
                "-m 128M -object memory-backend-ram,id=r0,size=256M -machine pc,memory-backend=r0"
            )
            .unwrap_err(),
            "Machine memory size does not match the size of the memory backend"
        );
        assert_eq!(
            part("-m 256M -machine memory-backend=nope").unwrap_err(),
            "Memory backend 'nope' not found"
        );
        assert!(
            part("-object memory-backend-ram,id=r0,size=256M -machine pc,memory-backend=r0")
                .is_ok()
        );
    }
}
