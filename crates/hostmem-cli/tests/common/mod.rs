//! Helpers shared by more than one test crate (`mod common;` in each).

// Not every test crate that includes `common` uses each helper (schema.rs reads no
// kernel, holds no backend and talks to no QEMU).
#[allow(dead_code)]
pub mod held;
#[allow(dead_code)]
pub mod kernel;
#[allow(dead_code)]
pub mod qmp;
pub mod schema;
