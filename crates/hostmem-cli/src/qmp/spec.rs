//! The `-qmp` option: which socket to serve. Parsed before any backend is made, so a
//! spelling hostmem cannot serve (TCP, client mode) fails the command line at once.

use std::path::PathBuf;

/// Why `-qmp` text is not a socket this monitor can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    NotUnix(String),
    EmptyPath,
    BadOption(String),
    ClientMode,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::NotUnix(s) => write!(
                f,
                "'{s}': only Unix sockets are served (unix:PATH[,server=on][,wait=off] or PATH)"
            ),
            SpecError::EmptyPath => write!(f, "the socket path is empty"),
            SpecError::BadOption(o) => write!(
                f,
                "option '{o}' is not one hostmem takes (server=on, wait=on|off)"
            ),
            SpecError::ClientMode => {
                write!(
                    f,
                    "server=off (connecting out) is not supported; hostmem only listens"
                )
            }
        }
    }
}

/// Parses `-qmp`: `unix:PATH[,server=on][,wait=off]` (QEMU's chardev spelling; also the
/// old `server`/`nowait` flags) or a bare PATH. `wait` changes nothing here: the
/// backends are made before the socket is listening either way.
pub fn parse_spec(text: &str) -> Result<PathBuf, SpecError> {
    let Some(rest) = text.strip_prefix("unix:") else {
        let looks_like_uri = text.split_once(':').is_some_and(|(scheme, _)| {
            ["tcp", "stdio", "vsock", "udp", "telnet"].contains(&scheme)
        });
        if looks_like_uri {
            return Err(SpecError::NotUnix(text.to_string()));
        }
        if text.is_empty() {
            return Err(SpecError::EmptyPath);
        }
        return Ok(PathBuf::from(text));
    };
    let mut items = rest.split(',');
    let path = items.next().unwrap_or_default();
    if path.is_empty() {
        return Err(SpecError::EmptyPath);
    }
    for item in items {
        match item.split_once('=') {
            Some(("server", v)) => match hostmem::props::parse_bool(v) {
                Some(true) => {}
                Some(false) => return Err(SpecError::ClientMode),
                None => return Err(SpecError::BadOption(item.to_string())),
            },
            Some(("wait", v)) if hostmem::props::parse_bool(v).is_some() => {}
            None if item == "server" || item == "nowait" => {}
            _ => return Err(SpecError::BadOption(item.to_string())),
        }
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_socket_spellings() {
        let p = |s| parse_spec(s);
        assert_eq!(
            p("unix:/tmp/q.sock,server=on,wait=off"),
            Ok("/tmp/q.sock".into())
        );
        assert_eq!(
            p("unix:/tmp/q.sock,server,nowait"),
            Ok("/tmp/q.sock".into())
        );
        assert_eq!(p("unix:rel.sock"), Ok("rel.sock".into()));
        assert_eq!(p("/run/hostmem.qmp"), Ok("/run/hostmem.qmp".into()));
        assert_eq!(p("unix:/x,server=off"), Err(SpecError::ClientMode));
        assert_eq!(
            p("unix:/x,speed=9"),
            Err(SpecError::BadOption("speed=9".into()))
        );
        assert_eq!(p("unix:"), Err(SpecError::EmptyPath));
        assert!(matches!(
            p("tcp:localhost:4444,server=on"),
            Err(SpecError::NotUnix(_))
        ));
    }
}
