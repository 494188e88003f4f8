//! Splits the byte stream of a QMP connection into JSON messages.
//!
//! QMP is a stream of JSON values, not of lines: QEMU accepts a request spread over
//! several lines and several requests on one line, and takes single-quoted strings
//! (`{'execute': 'quit'}`). The framer tracks nesting and strings only, rewrites
//! single-quoted strings as double-quoted ones, and leaves the real parsing to
//! serde_json. It bounds the size of one message so a client cannot make the server
//! buffer without limit.

/// Why the stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// One message grew past the limit (bytes) without ending.
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(limit) => {
                write!(f, "QMP input exceeds {limit} bytes; closing the connection")
            }
        }
    }
}

/// Incremental splitter: feed it bytes, take complete messages out.
#[derive(Debug)]
pub struct Framer {
    limit: usize,
    buf: Vec<u8>,
    depth: usize,
    /// The quote character of the string being read, if inside one.
    quote: Option<u8>,
    escape: bool,
    /// A message past the limit ended on the byte just read.
    overflow: bool,
}

impl Framer {
    pub fn new(limit: usize) -> Self {
        Framer {
            limit,
            buf: Vec::new(),
            depth: 0,
            quote: None,
            escape: false,
            overflow: false,
        }
    }

    /// Feeds bytes; complete messages are appended to `out`. After an error the
    /// framer must not be used again (the connection is to be closed).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        for &b in bytes {
            self.byte(b, out);
            if self.overflow || self.buf.len() > self.limit {
                self.buf = Vec::new();
                return Err(FrameError::TooLarge(self.limit));
            }
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut Vec<Vec<u8>>) {
        // The byte that ends a message counts too: limit + 1 bytes is too many even
        // when the last one completes it.
        if self.buf.len() > self.limit {
            self.overflow = true;
        } else if !self.buf.is_empty() {
            out.push(std::mem::take(&mut self.buf));
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Vec<u8>>) {
        if let Some(q) = self.quote {
            self.string_byte(q, b, out);
            return;
        }
        match b {
            b'"' | b'\'' => {
                // A bare scalar directly before a string: two values, not one.
                if self.depth == 0 {
                    self.emit(out);
                }
                self.quote = Some(b);
                self.buf.push(b'"');
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.emit(out);
                }
                self.depth += 1;
                self.buf.push(b);
            }
            b'}' | b']' => {
                self.buf.push(b);
                if self.depth <= 1 {
                    // Either the end of a message or a stray closer (a parse error
                    // serde_json will name); both end what was buffered.
                    self.depth = 0;
                    self.emit(out);
                } else {
                    self.depth -= 1;
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth == 0 {
                    self.emit(out);
                } else {
                    self.buf.push(b);
                }
            }
            _ => self.buf.push(b),
        }
    }

    fn string_byte(&mut self, q: u8, b: u8, out: &mut Vec<Vec<u8>>) {
        if self.escape {
            self.escape = false;
            // `\'` is only an escape in QEMU's single-quoted strings; in JSON it is `'`.
            if b != b'\'' {
                self.buf.push(b'\\');
            }
            self.buf.push(b);
        } else if b == b'\\' {
            self.escape = true;
        } else if b == q {
            self.quote = None;
            self.buf.push(b'"');
            if self.depth == 0 {
                self.emit(out);
            }
        } else if b == b'"' {
            // Only reachable inside a single-quoted string.
            self.buf.extend_from_slice(b"\\\"");
        } else {
            self.buf.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<String> {
        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        f.feed(text.as_bytes(), &mut out).unwrap();
        out.into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect()
    }

    #[test]
    fn messages_are_values_not_lines() {
        assert_eq!(
            split("{\"execute\":\n \"quit\"}{\"a\":[1,{}]}\n"),
            ["{\"execute\":\n \"quit\"}", "{\"a\":[1,{}]}"]
        );
        assert_eq!(split("  \n"), Vec::<String>::new());
        assert_eq!(split("123 null \"x y\"\n"), ["123", "null", "\"x y\""]);
        assert_eq!(split("{\"a\": \"}{\"}"), ["{\"a\": \"}{\"}"]);
    }

    #[test]
    fn single_quotes_become_json_strings() {
        assert_eq!(
            split(r#"{'execute': 'say "hi"', 'id': 'it\'s'}"#),
            [r#"{"execute": "say \"hi\"", "id": "it's"}"#]
        );
        assert_eq!(split(r#"{"a": "\"\\"}"#), [r#"{"a": "\"\\"}"#]);
    }

    #[test]
    fn stray_closers_come_out_for_the_parser_to_refuse() {
        assert_eq!(split("}\n"), ["}"]);
        assert_eq!(split("x}"), ["x}"]);
    }

    #[test]
    fn a_message_past_the_limit_is_an_error() {
        let mut f = Framer::new(16);
        let mut out = Vec::new();
        assert_eq!(
            f.feed(b"{\"execute\": \"0123456789\"", &mut out),
            Err(FrameError::TooLarge(16))
        );
        let mut f = Framer::new(16);
        assert!(f.feed(b"{\"a\":1}{\"b\":2}{\"c\":3}", &mut out).is_ok());
        assert_eq!(out.len(), 3);
        // Exactly at the limit passes; one byte more does not, even when that byte is
        // the one that completes the message (it used to slip through).
        let mut out = Vec::new();
        let mut f = Framer::new(16);
        assert!(f.feed(b"{\"a\":\"01234567\"}", &mut out).is_ok());
        assert_eq!(out, [b"{\"a\":\"01234567\"}".to_vec()]);
        let mut out = Vec::new();
        let mut f = Framer::new(16);
        assert_eq!(
            f.feed(b"{\"a\":\"012345678\"}", &mut out),
            Err(FrameError::TooLarge(16))
        );
        assert!(out.is_empty());
        let mut f = Framer::new(4);
        assert_eq!(f.feed(b"12345 ", &mut out), Err(FrameError::TooLarge(4)));
        assert!(out.is_empty());
    }
}
