//! QMP errors as the client sees them: QEMU's error classes and wording, so tools
//! written for QEMU's monitor (libvirt, qemu.qmp, scripts matching on `class`) keep
//! working.

use serde_json::{json, Value};

/// The error classes QEMU's QAPI schema defines that this monitor can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything without a more specific class (QEMU uses it for nearly all errors).
    GenericError,
    /// Unknown command, or any command but `qmp_capabilities` before negotiation.
    CommandNotFound,
    /// A QOM path that names nothing (`qom-get`, `qom-set`, `qom-list`).
    DeviceNotFound,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// One error reply: class and human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// QEMU's answer for a QOM path that resolves to nothing.
    pub fn device_not_found(path: &str) -> Self {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{path}' not found"),
        }
    }

    /// `Parameter 'NAME' is missing`
    pub fn missing(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is missing"))
    }

    /// `Parameter 'NAME' is unexpected`
    pub fn unexpected(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is unexpected"))
    }

    /// `Invalid parameter type for 'NAME', expected: WHAT` (JSON type mismatch).
    pub fn bad_type(name: &str, expected: &str) -> Self {
        Self::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }

    /// `Parameter 'NAME' expects WHAT` (a number out of its type's range).
    pub fn bad_value(name: &str, expected: &str) -> Self {
        Self::generic(format!("Parameter '{name}' expects {expected}"))
    }

    /// The error reply, with the request's `id` echoed when it had one.
    pub fn reply(&self, id: Option<&Value>) -> Value {
        let mut r = json!({"error": {"class": self.class.name(), "desc": self.desc}});
        if let Some(id) = id {
            r["id"] = id.clone();
        }
        r
    }
}

/// Library errors carry QEMU's wording where QEMU has one; all are GenericError.
impl From<hostmem::Error> for QmpError {
    fn from(e: hostmem::Error) -> Self {
        match e {
            hostmem::Error::DeviceNotFound(path) => QmpError::device_not_found(&path),
            e => QmpError::generic(e.to_string()),
        }
    }
}

impl From<hostmem::numa::NodeListError> for QmpError {
    fn from(e: hostmem::numa::NodeListError) -> Self {
        QmpError::generic(e.to_string())
    }
}
