//! What one connection's protocol state is, and what a command asks of the connection
//! after its reply: shared by the conversation that keeps the state, the dispatch that
//! runs a request in it and the commands that change it (`qmp_capabilities`, `quit`).

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    pub negotiated: bool,
    pub oob: bool,
}

/// What the connection must do after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// `quit`: stop the server once the reply is out.
    Quit,
}
