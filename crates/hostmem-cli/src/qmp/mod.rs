//! The QMP monitor of `hostmem run`: QEMU's Machine Protocol on a Unix socket, for the
//! memory-backend part of QEMU's command set (docs/qmp.md).
//!
//! One thread per client, so a slow command (a preallocation of GiBs) or a client that
//! stops reading never holds up the others. Every request is bounded in size, every
//! write in time; nothing a client sends can panic the server. The serve loop ends on
//! `quit`, SIGINT or SIGTERM; then running preallocations are cancelled, commands in
//! flight are waited for (up to 30 s), the socket file is removed and every backend is
//! deleted; one that cannot be (still held) is named on stderr, never dropped silently.
//!
//! [`Monitor`] is the same request path without a socket (for the fuzz target and
//! tests): bytes in, replies out, through the [`Conversation`] every connection
//! thread runs.
//!
//! The path of a request, one file each: `server` (socket, threads, stop) →
//! `conversation` (framing, the `session`) → `dispatch` (one reply per message) →
//! `commands` (the table of commands; with `args`, `objects`, `qom_cmds`, `registry`),
//! over the state in `shared`; `spec` parses `-qmp`,
//! `limits` bounds an in-process monitor.

mod args;
mod commands;
mod conversation;
mod dispatch;
mod error;
pub(crate) mod framer;
mod limits;
mod monitor;
mod objects;
mod qom;
mod qom_cmds;
mod registry;
mod request;
mod server;
mod session;
mod shared;
mod spec;

pub use conversation::{Conversation, Flow, MAX_REQUEST};
pub use limits::Limits;
pub use monitor::Monitor;
pub use registry::NotDeleted;
pub use server::{serve, ServeError};
pub use session::Session;
pub use shared::{Shared, Tracked};
pub use spec::{parse_spec, SpecError};
