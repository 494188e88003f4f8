//! The tools hostmem's tests share, written once: a QMP client of the tests' own
//! ([`qmp`]), a huge page pool guard ([`pool`]), a QEMU child-process guard ([`qemu`])
//! and a spawner of the hostmem binary ([`spawn`]).
//!
//! Dev-only (`publish = false`): the published crates name it as a path-only
//! dev-dependency, which `cargo package` strips. It does not depend on hostmem, so
//! what the tests read and set here shares no code with the library under test, and
//! the guest suite of tests/numa-vm can use it too. Errors are `Result<_, String>`:
//! the guest suite reports a failed check and goes on; test crates `unwrap`.

pub mod pool;
pub mod qemu;
pub mod qmp;
pub mod spawn;

use std::time::{Duration, Instant};

/// Polls `ready` until it gives `Some`, or fails with `what` once `limit` has passed:
/// the wait for an observable condition that replaces a sleep.
pub fn wait_until<T>(
    limit: Duration,
    what: impl Fn() -> String,
    mut ready: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = ready()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("{} within {limit:?}", what()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
