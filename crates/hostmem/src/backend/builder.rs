//! Typed construction of a backend. The setters themselves are made by each property
//! group's declaration (`props::group`), so a new property gets its setter for free.

use super::Backend;
use crate::error::{Error, Result};
use crate::prealloc::Progress;
use crate::props::{Prop, PropValue};

/// Typed construction of a backend: `Backend::builder(Kind::Ram, "ram0").size(1 << 30)`.
/// The first refused value is kept and returned by [`Builder::build`].
#[derive(Debug)]
pub struct Builder {
    pub(super) backend: Backend,
    pub(super) error: Option<Error>,
}

impl Builder {
    /// Sets one property (used by the generated setters).
    pub(crate) fn with(mut self, prop: &Prop, value: PropValue) -> Self {
        if self.error.is_none() {
            if let Err(e) = self.backend.set(prop.name, value) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Goes ahead even where the memory limits say the memory is not there
    /// ([`Backend::set_ignore_memory_limits`]).
    pub fn ignore_memory_limits(mut self, ignore: bool) -> Self {
        self.backend.set_ignore_memory_limits(ignore);
        self
    }

    /// The configured backend, not yet allocated.
    pub fn build(self) -> Result<Backend> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.backend),
        }
    }

    /// The backend, allocated.
    pub fn create(self) -> Result<Backend> {
        self.create_with(&Progress::new())
    }

    /// The backend, allocated with observable progress and cancellation.
    pub fn create_with(self, progress: &Progress) -> Result<Backend> {
        let mut b = self.build()?;
        b.complete_with(progress)?;
        Ok(b)
    }
}
