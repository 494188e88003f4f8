//! Helpers shared by more than one test crate (`mod common;` in each).

// Not every test crate that includes `common` uses each helper (schema.rs reads no
// kernel and holds no backend).
#[allow(dead_code)]
pub mod held;
#[allow(dead_code)]
pub mod kernel;
pub mod schema;
