//! The process's memory and hugetlb cgroup limits. Every VM under libvirt, KubeVirt or
//! systemd runs in a memory cgroup; a prealloc past its `memory.max` ends in the
//! cgroup's OOM killer, and a hugetlb fault past `hugetlb.<size>.max` in SIGBUS (or
//! EFAULT from MADV_POPULATE). Limits apply along the whole path to the root, so the
//! room is the tightest of the process's cgroup and its ancestors.
//!
//! cgroup v2 is used where its hierarchy has the controller; otherwise v1, where the
//! controller has a hierarchy of its own (the cgroup path and mount come from
//! `/proc/self/cgroup` and `/proc/self/mountinfo`).

use std::path::{Path, PathBuf};

use super::{read_limit, read_text, Known, Unknown};

/// Which cgroup interface a limit was read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// `memory.limit_in_bytes` / `memory.usage_in_bytes`, `hugetlb.<size>.limit_in_bytes`
    /// / `.usage_in_bytes`.
    V1,
    /// `memory.max` / `memory.current`, `hugetlb.<size>.max` / `.current`.
    V2,
}

/// v1 writes "no limit" as the largest page-aligned counter value; anything this large
/// is no limit on a real machine.
const V1_UNLIMITED: u64 = 1 << 62;

/// One cgroup's limit and use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    /// The cgroup as `/proc/self/cgroup` names it (`/machine.slice/vm1`).
    pub cgroup: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The interface.
    pub version: CgroupVersion,
    /// The file holding the limit (`memory.max`, `hugetlb.2MB.max`, ...).
    pub max_file: String,
    /// The file holding the use.
    pub current_file: String,
    /// The limit, bytes.
    pub max: u64,
    /// In use now, bytes.
    pub current: u64,
}

impl CgroupLimit {
    /// Bytes the cgroup may still charge.
    pub fn room(&self) -> u64 {
        self.max.saturating_sub(self.current)
    }

    /// Reads the use again (the limit too: an administrator may change it).
    pub fn reread(&self) -> Known<CgroupLimit> {
        read_one(
            &self.cgroup,
            &self.dir,
            self.version,
            &self.max_file,
            &self.current_file,
        )
        .and_then(|l| l.ok_or_else(|| Unknown::new(&self.dir.join(&self.max_file), "gone")))
    }
}

/// The tightest memory limit over the process's cgroup and its ancestors.
pub fn memory() -> Known<Option<CgroupLimit>> {
    tightest("memory", |v| match v {
        CgroupVersion::V2 => ("memory.max".into(), "memory.current".into()),
        CgroupVersion::V1 => (
            "memory.limit_in_bytes".into(),
            "memory.usage_in_bytes".into(),
        ),
    })
}

/// The hugetlb cgroup controller's name (in /proc/self/cgroup and cgroup.controllers).
const HUGETLB_CONTROLLER: &str = "hugetlb"; // not a property: the cgroup controller

/// The tightest hugetlb limit for `page_size` pages over the process's cgroups.
pub fn hugetlb(page_size: u64) -> Known<Option<CgroupLimit>> {
    let size = hugetlb_size_name(page_size);
    tightest(HUGETLB_CONTROLLER, |v| match v {
        CgroupVersion::V2 => (
            format!("hugetlb.{size}.max"),
            format!("hugetlb.{size}.current"),
        ),
        CgroupVersion::V1 => (
            format!("hugetlb.{size}.limit_in_bytes"),
            format!("hugetlb.{size}.usage_in_bytes"),
        ),
    })
}

/// The kernel's name for a huge page size in hugetlb cgroup files: `2MB`, `1GB`, `64KB`.
/// The kernel (`mem_fmt` in mm/hugetlb_cgroup.c) takes the largest unit the size
/// reaches and divides, rounding down; huge page sizes are powers of two, so nothing
/// is lost.
pub fn hugetlb_size_name(page_size: u64) -> String {
    if page_size >= 1 << 30 {
        format!("{}GB", page_size >> 30)
    } else if page_size >= 1 << 20 {
        format!("{}MB", page_size >> 20)
    } else {
        format!("{}KB", page_size >> 10)
    }
}

fn tightest(
    controller: &str,
    files: impl Fn(CgroupVersion) -> (String, String),
) -> Known<Option<CgroupLimit>> {
    let cgroups_path = Path::new("/proc/self/cgroup");
    let cgroups = read_text(cgroups_path)?;
    let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
    let Some(place) = locate(&cgroups, &mountinfo, controller, |root| {
        read_text(&root.join("cgroup.controllers")).unwrap_or_default()
    }) else {
        return Ok(None);
    };
    let (max_file, current_file) = files(place.version);
    tightest_along(&place, &max_file, &current_file)
}

/// The limit with the least room over `place`'s chain; on a tie the cgroup nearest
/// the process (the one its own configuration names).
fn tightest_along(place: &Place, max_file: &str, current_file: &str) -> Known<Option<CgroupLimit>> {
    let mut best: Option<CgroupLimit> = None;
    for (cgroup, dir) in place.chain() {
        if let Some(l) = read_one(&cgroup, &dir, place.version, max_file, current_file)? {
            if best.as_ref().is_none_or(|b| l.room() < b.room()) {
                best = Some(l);
            }
        }
    }
    Ok(best)
}

/// The limit of one cgroup directory; None when it has no such files (the root of v2,
/// a cgroup whose parent does not enable the controller) or no limit.
fn read_one(
    cgroup: &str,
    dir: &Path,
    version: CgroupVersion,
    max_file: &str,
    current_file: &str,
) -> Known<Option<CgroupLimit>> {
    let max_path = dir.join(max_file);
    if !max_path.exists() {
        return Ok(None);
    }
    let Some(max) = read_limit(&max_path)?.filter(|&m| m < V1_UNLIMITED) else {
        return Ok(None);
    };
    let cur_path = dir.join(current_file);
    let current = read_limit(&cur_path)?
        .ok_or_else(|| Unknown::new(&cur_path, "reads \"max\", not a byte count"))?;
    Ok(Some(CgroupLimit {
        cgroup: cgroup.to_string(),
        dir: dir.to_path_buf(),
        version,
        max_file: max_file.to_string(),
        current_file: current_file.to_string(),
        max,
        current,
    }))
}

/// Where the process's cgroup for a controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    version: CgroupVersion,
    /// The cgroup path (`/machine.slice/vm1`).
    cgroup: String,
    /// Where the hierarchy is mounted and which of its cgroups is the mount's root.
    mount_point: PathBuf,
    mount_root: String,
}

impl Place {
    /// The process's cgroup and each ancestor up to the mount's root, leaf first, as
    /// (cgroup path, directory).
    fn chain(&self) -> Vec<(String, PathBuf)> {
        let root = self.mount_root.trim_end_matches('/');
        let mut out = Vec::new();
        let mut cg = self.cgroup.as_str();
        loop {
            let rel = cg.strip_prefix(root).unwrap_or(cg).trim_start_matches('/');
            out.push((
                if cg.is_empty() { "/" } else { cg }.to_string(),
                self.mount_point.join(rel),
            ));
            if cg.is_empty() || cg == "/" || cg == root {
                break;
            }
            cg = &cg[..cg.rfind('/').unwrap_or(0)];
        }
        out
    }
}

/// Finds the cgroup of `controller` from the texts of /proc/self/cgroup and
/// /proc/self/mountinfo: v2 when its root's `cgroup.controllers` (read through
/// `controllers`) lists it, else the v1 hierarchy that has it; None when neither.
fn locate(
    cgroups: &str,
    mountinfo: &str,
    controller: &str,
    controllers: impl Fn(&Path) -> String,
) -> Option<Place> {
    // mountinfo: id parent dev root mountpoint opts [tags] - fstype source superopts
    let mounts = mountinfo.lines().filter_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        Some((
            *left.get(3)?,
            *left.get(4)?,
            *right.first()?,
            *right.get(2).unwrap_or(&""),
        ))
    });
    let mounts: Vec<_> = mounts.collect();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            let Some((root, point, ..)) = mounts.iter().find(|m| m.2 == "cgroup2") else {
                continue;
            };
            let has = controllers(Path::new(point))
                .split_whitespace()
                .any(|c| c == controller);
            if has {
                return Some(Place {
                    version: CgroupVersion::V2,
                    cgroup: path.to_string(),
                    mount_point: PathBuf::from(point),
                    mount_root: root.to_string(),
                });
            }
        }
    }
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == controller) {
            let (root, point, ..) = mounts
                .iter()
                .find(|m| m.2 == "cgroup" && m.3.split(',').any(|o| o == controller))?;
            return Some(Place {
                version: CgroupVersion::V1,
                cgroup: path.to_string(),
                mount_point: PathBuf::from(point),
                mount_root: root.to_string(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "4:memory:/process_api/abc\n3:hugetlb:/\n0::/\n";
    const MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/hugetlb rw,relatime - cgroup cgroup rw,hugetlb
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_is_used_when_the_v2_hierarchy_lacks_the_controller() {
        let p = locate(HYBRID, MOUNTS, "memory", |_| String::new()).unwrap();
        assert_eq!(p.version, CgroupVersion::V1);
        assert_eq!(p.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            p.chain(),
            [
                (
                    "/process_api/abc".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
                ),
                (
                    "/process_api".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/process_api")
                ),
                ("/".to_string(), PathBuf::from("/sys/fs/cgroup/memory/")),
            ]
        );
        assert!(locate(HYBRID, MOUNTS, "pids", |_| String::new()).is_none());
    }

    #[test]
    fn v2_wins_when_its_root_has_the_controller() {
        let cg = "0::/machine.slice/vm1\n";
        let mounts = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let p = locate(cg, mounts, "memory", |root| {
            assert_eq!(root, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory hugetlb pids".into()
        })
        .unwrap();
        assert_eq!(p.version, CgroupVersion::V2);
        let dirs: Vec<String> = p.chain().into_iter().map(|(c, _)| c).collect();
        assert_eq!(dirs, ["/machine.slice/vm1", "/machine.slice", "/"]);
    }

    /// A scratch v2 hierarchy named `name`: each (cgroup, memory.max, memory.current)
    /// written under it; the root has no files, as on v2.
    fn scratch_hierarchy(name: &str, cgroups: &[(&str, &str, &str)]) -> PathBuf {
        let tmp = std::env::temp_dir().join(format!("hostmem-cg-{}-{name}", std::process::id()));
        for (cg, max, cur) in cgroups {
            let d = tmp.join(cg.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.max"), max).unwrap();
            std::fs::write(d.join("memory.current"), cur).unwrap();
        }
        tmp
    }

    fn v2_place(cgroup: &str, mount_point: &Path) -> Place {
        Place {
            version: CgroupVersion::V2,
            cgroup: cgroup.into(),
            mount_point: mount_point.to_path_buf(),
            mount_root: "/".into(),
        }
    }

    #[test]
    fn the_tightest_ancestor_is_the_limit_and_max_means_none() {
        // /a has 100 bytes of room, /a/b none of its own ("max"), the leaf 200.
        let tmp = scratch_hierarchy(
            "tightest",
            &[
                ("/a", "1000\n", "900\n"),
                ("/a/b", "max\n", "100\n"),
                ("/a/b/c", "500\n", "300\n"),
            ],
        );
        let best = tightest_along(&v2_place("/a/b/c", &tmp), "memory.max", "memory.current")
            .unwrap()
            .expect("/a and /a/b/c have limits");
        assert_eq!((best.cgroup.as_str(), best.room()), ("/a", 100));
        std::fs::write(tmp.join("a/memory.current"), "garbage").unwrap();
        let e = best.reread().unwrap_err();
        assert!(e.reason.contains("not a number"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_tie_in_room_names_the_cgroup_nearest_the_process() {
        let tmp = scratch_hierarchy(
            "tie",
            &[("/a", "1000\n", "900\n"), ("/a/b", "300\n", "200\n")],
        );
        let best = tightest_along(&v2_place("/a/b", &tmp), "memory.max", "memory.current")
            .unwrap()
            .unwrap();
        assert_eq!((best.cgroup.as_str(), best.room()), ("/a/b", 100));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn v1_limits_from_2_pow_62_up_read_as_no_limit() {
        let tmp = std::env::temp_dir().join(format!("hostmem-cg-{}-v1max", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("memory.usage_in_bytes"), "4096\n").unwrap();
        let max_of = |limit: u64| {
            std::fs::write(tmp.join("memory.limit_in_bytes"), format!("{limit}\n")).unwrap();
            read_one(
                "/",
                &tmp,
                CgroupVersion::V1,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
            .unwrap()
            .map(|l| l.max)
        };
        // What v1 writes for "no limit" on x86-64 (LONG_MAX rounded down to a page).
        assert_eq!(max_of(9_223_372_036_854_771_712), None);
        assert_eq!(max_of(1 << 62), None);
        assert_eq!(max_of((1 << 62) - 4096), Some((1 << 62) - 4096));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_process_in_the_root_cgroup_has_a_chain_of_the_root_alone() {
        let p = v2_place("/", Path::new("/sys/fs/cgroup"));
        assert_eq!(
            p.chain(),
            [("/".to_string(), PathBuf::from("/sys/fs/cgroup/"))]
        );
    }

    #[test]
    fn the_chain_stops_at_the_mounts_root_cgroup() {
        // A v1 hierarchy mounted from /machine.slice (as in a container): its parent
        // cannot be reached through this mount.
        let p = Place {
            version: CgroupVersion::V1,
            cgroup: "/machine.slice/vm1".into(),
            mount_point: PathBuf::from("/sys/fs/cgroup/memory"),
            mount_root: "/machine.slice".into(),
        };
        assert_eq!(
            p.chain(),
            [
                (
                    "/machine.slice/vm1".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/vm1")
                ),
                (
                    "/machine.slice".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/")
                ),
            ]
        );
    }

    #[test]
    fn v1_is_used_when_the_v2_root_lists_other_controllers_only() {
        let p = locate(HYBRID, MOUNTS, "memory", |_| "cpu io pids".into()).unwrap();
        assert_eq!(
            (p.version, p.mount_point),
            (CgroupVersion::V1, PathBuf::from("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn each_v1_controller_is_found_at_the_mount_whose_options_name_it() {
        let p = locate(HYBRID, MOUNTS, "hugetlb", |_| String::new()).unwrap();
        assert_eq!(
            (p.version, p.cgroup.as_str(), p.mount_point),
            (
                CgroupVersion::V1,
                "/",
                PathBuf::from("/sys/fs/cgroup/hugetlb")
            )
        );
    }

    #[test]
    fn hugetlb_file_names_use_the_kernels_size_words() {
        assert_eq!(hugetlb_size_name(64 << 10), "64KB");
        assert_eq!(hugetlb_size_name(1 << 20), "1MB");
        assert_eq!(hugetlb_size_name(2 << 20), "2MB");
        assert_eq!(hugetlb_size_name(512 << 20), "512MB");
        assert_eq!(hugetlb_size_name(1 << 30), "1GB");
        assert_eq!(hugetlb_size_name(16 << 30), "16GB");
    }

    #[test]
    fn this_processs_memory_cgroup_files_are_readable() {
        // Whatever the machine has, the files are read; a limit leaves no more room than
        // itself.
        if let Some(l) = memory().expect("the memory cgroup files of this process") {
            assert!(
                l.room() <= l.max && l.dir.join(&l.max_file).exists(),
                "{l:?}"
            );
        }
    }
}
