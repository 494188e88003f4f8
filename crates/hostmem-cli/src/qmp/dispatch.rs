//! One message to one reply: parse the request, run the command, shape the reply with
//! the request's `id`. The single place where a panic in a command is caught, so a bug
//! costs one error reply, not a connection or the server.

use serde_json::{json, Value};

use super::commands;
use super::error::QmpError;
use super::request;
use super::session::{After, Session};
use super::shared::Shared;

/// The reply to one message. A panic in a command (a bug, never input) becomes an
/// error reply instead of a dead connection.
pub(super) fn answer(shared: &Shared, session: &mut Session, message: &[u8]) -> (Value, After) {
    let req = match request::parse(message, session.oob) {
        Ok(r) => r,
        Err(refused) => return (refused.error.reply(refused.id.as_ref()), After::Continue),
    };
    let run = std::panic::AssertUnwindSafe(|| {
        commands::execute(shared, session, &req.command, req.arguments, req.oob)
    });
    let result = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(QmpError::generic(format!(
            "internal error in {}; the command may have had part of its effect",
            req.command
        )))
    });
    match result {
        Ok((ret, after)) => {
            let mut r = json!({"return": ret});
            if let Some(id) = req.id {
                r["id"] = id;
            }
            (r, after)
        }
        Err(e) => (e.reply(req.id.as_ref()), After::Continue),
    }
}
