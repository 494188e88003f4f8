//! QEMU as a child process of a test: started on a machine that runs no guest code,
//! with QMP monitors on Unix sockets, and killed when the guard is dropped (also when
//! the test panics or a check fails half-way), so no QEMU outlives its test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// `BINARY -machine pc -accel tcg -S -display none -nodefaults -m MIB`: a PC that is
/// never started (`-S`), so its RAM blocks exist and nothing touches them. Add
/// `-object`/`-numa` arguments and monitors ([`qmp_arg`]), then [`Qemu::spawn`].
pub fn stopped_pc(binary: &str, mem_mib: u64) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["-machine", "pc", "-accel", "tcg", "-S", "-display", "none"])
        .args(["-nodefaults", "-m", &format!("{mem_mib}M")]);
    cmd
}

/// The `-qmp` argument of a monitor listening on the Unix socket `sock`.
pub fn qmp_arg(sock: &Path) -> String {
    format!("unix:{},server=on,wait=off", sock.display())
}

/// A running QEMU, killed and reaped on drop.
pub struct Qemu {
    child: Child,
}

impl Qemu {
    /// Spawns `cmd` (stdin from /dev/null) and waits until every socket of `sockets`
    /// exists; fails when QEMU cannot start, exits first, or `limit` passes.
    pub fn spawn(mut cmd: Command, sockets: &[PathBuf], limit: Duration) -> Result<Qemu, String> {
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.stdin(Stdio::null()).spawn().map_err(|e| {
            format!("starting {name}: {e} (apt-get install qemu-system-x86 provides it)")
        })?;
        let mut q = Qemu { child };
        wait_until(
            limit,
            || format!("{name} made no QMP sockets {sockets:?}"),
            || {
                if let Some(st) = q.child.try_wait().map_err(|e| e.to_string())? {
                    return Err(format!("{name} exited ({st}) before listening"));
                }
                Ok(sockets.iter().all(|s| s.exists()).then_some(()))
            },
        )?;
        Ok(q)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills QEMU now and reaps it (nothing when it has exited already).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}
