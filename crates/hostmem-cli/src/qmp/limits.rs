//! What a monitor lets clients create. The socket server sets no bounds (the operator
//! decides what the host can give); an in-process monitor fed arbitrary input (the
//! fuzz target) does, so no request can exhaust the machine or write outside a
//! directory. Checked in `object-add` before anything is mapped.

use std::path::PathBuf;

use super::error::QmpError;

/// Bounds a monitor puts on what clients may create. The socket server sets none
/// ([`Limits::default`], the operator decides what the host can give); an in-process
/// monitor that takes arbitrary input (the fuzz target) sets them so that no request
/// can make it allocate more than it can afford or touch files outside a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest `size` an `object-add` may ask for, in bytes.
    pub max_backend_size: Option<u64>,
    /// The directory `mem-path` of a file backend must be in (compared component by
    /// component, `..` refused).
    pub mem_path_under: Option<PathBuf>,
}

impl Limits {
    /// Refuses a backend these limits do not allow, before anything is mapped.
    pub fn check(&self, id: &str, cfg: &hostmem::Config) -> Result<(), QmpError> {
        if let Some(max) = self.max_backend_size {
            let size = cfg.common.size;
            if size > max {
                return Err(QmpError::generic(format!(
                    "object '{id}': size {size} exceeds this monitor's limit of {max} bytes"
                )));
            }
        }
        // Every path-typed property (a file backend's mem-path) must lie in the directory.
        let paths = hostmem::kind::properties(cfg.kind())
            .filter(|p| p.ty == hostmem::PropType::Path)
            .filter_map(|p| match p.get(cfg) {
                Some(hostmem::PropValue::Path(path)) if !path.as_os_str().is_empty() => Some(path),
                _ => None,
            });
        let dir = self.mem_path_under.as_ref();
        for (dir, path) in paths.filter_map(|p| Some((dir?, p))) {
            let inside = path.starts_with(dir)
                && !path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if !inside {
                return Err(QmpError::generic(format!(
                    "object '{id}': mem-path {} is outside {}, the directory this monitor allows",
                    path.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}
