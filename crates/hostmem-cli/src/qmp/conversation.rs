//! One connection's protocol, without the socket: bytes in, each complete request
//! answered in order, replies out through a callback. The socket server runs one per
//! connection thread and [`Monitor`](super::Monitor) runs one in process, so the fuzz
//! target and the tests exercise exactly the path a client's bytes take.

use serde_json::Value;

use super::dispatch::answer;
use super::error::QmpError;
use super::framer::Framer;
use super::session::{After, Session};
use super::shared::{lock, Shared};
use crate::signals::Stop;

/// Largest request accepted; a client that sends more is answered and disconnected.
pub const MAX_REQUEST: usize = 1 << 20;

/// Whether a connection goes on after what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open,
    /// The client is to be disconnected: it sent too much, could not take a reply, or
    /// the server is stopping.
    Closed,
}

/// One connection's protocol: the framer that splits its bytes into requests and the
/// session they run in. Each connection thread of the socket server runs one, and so
/// does [`Monitor`](super::Monitor).
#[derive(Debug)]
pub struct Conversation {
    framer: Framer,
    session: Session,
    messages: Vec<Vec<u8>>,
}

impl Default for Conversation {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversation {
    pub fn new() -> Self {
        Conversation {
            framer: Framer::new(MAX_REQUEST),
            session: Session::default(),
            messages: Vec::new(),
        }
    }

    /// Takes bytes as they came from the client and answers every request they
    /// complete, in order. `deliver` gets each reply (with the session as it is after
    /// the request) and says whether it reached the client.
    pub fn feed(
        &mut self,
        shared: &Shared,
        bytes: &[u8],
        mut deliver: impl FnMut(&Session, &Value) -> bool,
    ) -> Flow {
        let framed = self.framer.feed(bytes, &mut self.messages);
        for m in std::mem::take(&mut self.messages) {
            let Some(running) = shared.begin() else {
                return Flow::Closed;
            };
            let (reply, after) = answer(shared, &mut self.session, &m);
            let sent = deliver(&self.session, &reply);
            drop(running);
            if after == After::Quit {
                // QEMU answers `quit` first, then announces the shutdown.
                shared.broadcast_shutdown("host-qmp-quit");
                let _ = lock(&shared.stop).send(Stop::Quit);
            }
            if !sent {
                return Flow::Closed;
            }
        }
        if let Err(e) = framed {
            deliver(&self.session, &QmpError::generic(e.to_string()).reply(None));
            return Flow::Closed;
        }
        Flow::Open
    }
}
