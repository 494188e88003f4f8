//! Backends as vm-memory guest memory, checked against the kernel: the fd read with
//! pread, /proc/self/maps, KVM's memory slots; and the defects of issue 14 (no dirty
//! tracking, one region per backend, FileOffset on private memory, read-only regions).

#[path = "../common/mod.rs"]
mod common;

mod dirty;
mod kvm;
mod loader;
mod readonly;
mod regions;
mod share;
mod sound;
mod split;
