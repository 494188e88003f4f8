//! Helpers shared by more than one test crate (`mod common;` in each).

pub mod schema;
