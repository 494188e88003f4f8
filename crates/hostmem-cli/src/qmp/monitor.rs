//! The monitor in process, without a socket: what the fuzz target and the tests drive.
//! It owns its own [`Shared`] state and runs one [`Conversation`], so its replies are
//! the ones a socket client would get, byte for byte.

use std::sync::mpsc::{channel, Receiver};

use hostmem::{Backend, MachineDefaults};
use serde_json::{json, Value};

use super::commands;
use super::conversation::{Conversation, Flow};
use super::limits::Limits;
use super::registry::Registry;
use super::shared::Shared;
use crate::signals::Stop;

/// The monitor in process, without a socket: one client's bytes in, the replies the
/// socket server would send out, through the same [`Conversation`]. Backends are
/// deleted when it is dropped.
pub struct Monitor {
    shared: Shared,
    conversation: Conversation,
    closed: bool,
    stop: Receiver<Stop>,
}

impl Monitor {
    pub fn new(backends: Vec<Backend>, defaults: MachineDefaults, limits: Limits) -> Self {
        let (tx, stop) = channel();
        Monitor {
            shared: Shared::new(Registry::with_backends(backends), defaults, limits, tx),
            conversation: Conversation::new(),
            closed: false,
            stop,
        }
    }

    /// The greeting a client gets on connecting.
    pub fn greeting() -> Value {
        json!({"QMP": {"version": commands::version(), "capabilities": ["oob"]}})
    }

    /// Feeds the client's bytes; returns the replies. Once the connection is closed
    /// (a request past [`MAX_REQUEST`](super::MAX_REQUEST)), nothing more is read, as
    /// on the socket.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Value> {
        let mut replies = Vec::new();
        if self.closed {
            return replies;
        }
        let flow = self.conversation.feed(&self.shared, bytes, |_, r| {
            replies.push(r.clone());
            true
        });
        self.closed = flow == Flow::Closed;
        replies
    }

    /// Whether the connection was closed by the server.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a `quit` was answered (the socket server would stop now).
    pub fn quit_requested(&self) -> bool {
        self.stop.try_recv().is_ok()
    }

    /// The ids of the live backends, in creation order.
    pub fn backend_ids(&self) -> Vec<String> {
        self.shared
            .registry
            .live()
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }
}

impl Drop for Monitor {
    /// Deletes the backends through `Backend::delete`, as the socket server does when
    /// it stops (so `discard-data` is honoured); none can be busy, the monitor runs no
    /// thread of its own.
    fn drop(&mut self) {
        for n in self.shared.registry.delete_all() {
            eprintln!("hostmem: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::qmp::shared::message_bytes;
    use crate::qmp::MAX_REQUEST;

    /// A monitor with capabilities negotiated.
    fn monitor(limits: Limits) -> Monitor {
        let mut m = Monitor::new(Vec::new(), MachineDefaults::default(), limits);
        assert_eq!(
            m.feed(b"{'execute': 'qmp_capabilities'}"),
            [json!({"return": {}})]
        );
        m
    }

    /// The reply to one `object-add` with these arguments.
    fn add(m: &mut Monitor, args: Value) -> Value {
        let req = json!({"execute": "object-add", "arguments": args});
        let mut r = m.feed(&message_bytes(&req));
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    fn error_desc(reply: &Value) -> &str {
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
    }

    #[test]
    fn in_process_monitor_frames_and_answers_like_the_socket() {
        let mut m = Monitor::new(Vec::new(), MachineDefaults::default(), Limits::default());
        assert_eq!(
            m.feed(b"{\"execute\": \"query-memdev\"}")[0]["error"]["class"],
            "CommandNotFound"
        );
        // A request cut into single bytes, two on one line, one across lines.
        let text = b"{\"execute\":\"qmp_capabilities\"}{\"execute\": \"object-add\", \"arguments\":\n{\"qom-type\": \"memory-backend-ram\", \"id\": \"r\", \"size\": 2097152}, \"id\": 7}";
        let mut replies = Vec::new();
        for b in text.iter() {
            replies.extend(m.feed(std::slice::from_ref(b)));
        }
        assert_eq!(
            replies,
            [json!({"return": {}}), json!({"return": {}, "id": 7})]
        );
        assert_eq!(m.backend_ids(), ["r"]);
        let r = m.feed(b"{'execute': 'query-memdev'} {'execute': 'quit'}");
        assert_eq!(r[0]["return"][0]["size"], 2 << 20);
        assert_eq!(r[1], json!({"return": {}}));
        assert!(m.quit_requested() && !m.is_closed());
    }

    #[test]
    fn query_commands_lists_exactly_the_table_and_runs_every_row() {
        let mut m = monitor(Limits::default());
        let names: Vec<&str> = commands::COMMANDS.iter().map(|c| c.name).collect();
        let listed = m.feed(b"{'execute': 'query-commands'}").remove(0);
        let listed: Vec<&str> = listed["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(listed, names);
        // Every row dispatches (`quit` only asks a socket server to stop, so the rows
        // after it are still answered here); a name outside the table is not found.
        for name in names.iter().copied().chain(["query-cpus"]) {
            let r = m.feed(&message_bytes(&json!({"execute": name}))).remove(0);
            let not_found = format!("The command {name} has not been found");
            assert_eq!(
                r["error"]["desc"] == not_found.as_str(),
                name == "query-cpus",
                "{r}"
            );
        }
        assert!(m.quit_requested());
    }

    #[test]
    fn dropping_the_monitor_deletes_its_backends() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("hostmem-monitor-{}", std::process::id()));
        let mut m = monitor(Limits::default());
        let r = add(
            &mut m,
            json!({"qom-type": "memory-backend-file", "id": "f", "size": 2 << 20,
                   "mem-path": path.to_str().unwrap(), "share": true, "prealloc": true,
                   "discard-data": true}),
        );
        assert_eq!(r, json!({"return": {}}));
        assert!(std::fs::metadata(&path).unwrap().blocks() > 0);
        drop(m);
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            blocks, 0,
            "Backend::delete ran: discard-data punched the blocks"
        );
    }

    #[test]
    fn one_request_may_be_1_mib_and_not_a_byte_more() {
        let mut m = monitor(Limits::default());
        let envelope = |pad: usize| {
            let head = b"{\"execute\": \"query-version\", \"id\": \"";
            let mut v = head.to_vec();
            v.extend(std::iter::repeat_n(b'x', pad - head.len() - 2));
            v.extend_from_slice(b"\"}");
            assert_eq!(v.len(), pad);
            v
        };
        let r = m.feed(&envelope(MAX_REQUEST));
        assert!(r[0]["return"]["package"].is_string(), "{:?}", r[0]["error"]);
        let r = m.feed(&envelope(MAX_REQUEST + 1));
        assert_eq!(
            error_desc(&r[0]),
            "QMP input exceeds 1048576 bytes; closing the connection"
        );
        assert!(m.is_closed());
        assert!(m.feed(b"{'execute': 'query-version'}").is_empty());
    }

    #[test]
    fn limits_refuse_before_mapping_and_the_server_sets_none() {
        let dir = std::env::temp_dir().join(format!("hostmem-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let outside = dir.with_extension("outside");
        let mut m = monitor(Limits {
            max_backend_size: Some(4 << 20),
            mem_path_under: Some(dir.clone()),
        });
        let r = add(
            &mut m,
            json!({"qom-type": "memory-backend-ram", "id": "big", "size": 8 << 20, "prealloc": true}),
        );
        assert_eq!(
            error_desc(&r),
            "object 'big': size 8388608 exceeds this monitor's limit of 4194304 bytes"
        );
        assert!(m.backend_ids().is_empty());
        let file = |path: &Path| {
            json!({"qom-type": "memory-backend-file", "id": "f", "size": 2 << 20,
                   "mem-path": path.to_str().unwrap()})
        };
        // `..` out of the directory, to a name no other program uses.
        let escaped = dir.join(format!("../hostmem-limits-{}.escaped", std::process::id()));
        for bad in [outside.clone(), escaped] {
            let r = add(&mut m, file(&bad));
            assert!(error_desc(&r).contains("is outside"), "{r}");
            assert!(!bad.exists(), "{} was created", bad.display());
        }
        assert_eq!(
            add(&mut m, file(&dir.join("inside"))),
            json!({"return": {}})
        );
        assert!(dir.join("inside").exists());
        assert_eq!(m.backend_ids(), ["f"]);
        drop(m);
        std::fs::remove_dir_all(&dir).unwrap();
        // Unlimited (what `serve` uses): the same request passes.
        let mut m = monitor(Limits::default());
        let r = add(
            &mut m,
            json!({"qom-type": "memory-backend-ram", "id": "big", "size": 8 << 20}),
        );
        assert_eq!(r, json!({"return": {}}));
    }
}
