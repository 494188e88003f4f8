//! JSON as QEMU's own parser reads it (qobject/json-lexer.c, json-parser.c), for the
//! `-object {...}` form: strings in double or single quotes (`{'qom-type':'...'}`),
//! `\'` among the escapes, a member given twice refused (`duplicate key`), integers
//! kept as integers when they fit int64 or uint64 (a float otherwise), nesting bounded.
//! The result is a serde_json value for the QAPI checks that follow.

use serde_json::{Map, Number, Value as Json};

use crate::error::{Error, Result};

/// QEMU's bound on nesting (json-parser.c's MAX_NESTING).
const MAX_NESTING: usize = 1024;

fn err(why: impl std::fmt::Display) -> Error {
    Error::Refused(format!("JSON parse error, {why}"))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn blank(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.blank();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<()> {
        if self.peek() != Some(c) {
            return Err(err(what));
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Json> {
        if depth > MAX_NESTING {
            return Err(err("too deeply nested"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(q @ (b'"' | b'\'')) => self.string(q).map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'a'..=b'z' | b'A'..=b'Z') => self.keyword(),
            Some(c) => Err(err(format!("stray '{}'", c as char))),
            None => Err(err("expecting value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json> {
        self.i += 1;
        let mut map = Map::new();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Object(map));
        }
        loop {
            let key = match self.peek() {
                Some(q @ (b'"' | b'\'')) => self.string(q)?,
                _ => return Err(err("key is not a string in object")),
            };
            self.expect(b':', "missing : in object pair")?;
            let v = self.value(depth + 1)?;
            if map.insert(key, v).is_some() {
                return Err(err("duplicate key"));
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Object(map));
                }
                _ => return Err(err("expected separator in dict")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json> {
        self.i += 1;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(err("expected separator in list")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| err("invalid hex escape sequence in string"))?;
        self.i += 4;
        u32::from_str_radix(h, 16).map_err(|_| err("invalid escape"))
    }

    fn string(&mut self, quote: u8) -> Result<String> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or_else(|| err("missing quote"))?;
            self.i += 1;
            match c {
                _ if c == quote => break,
                0..=0x1f => return Err(err("control character in string")),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or_else(|| err("missing quote"))?;
                    self.i += 1;
                    let ch = match e {
                        b'"' | b'\'' | b'\\' | b'/' => e as char,
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return Err(err("invalid escape sequence in string")),
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| err("invalid UTF-8 sequence in string"))
    }

    /// `\uXXXX`, a surrogate pair as two of them.
    fn unicode(&mut self) -> Result<char> {
        let hi = self.hex4()?;
        let cp = if (0xd800..0xdc00).contains(&hi) {
            if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(err("missing trail surrogate"));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err(err("invalid trail surrogate"));
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else {
            hi
        };
        // QEMU refuses \u0000 and lone surrogates.
        char::from_u32(cp)
            .filter(|&c| c != '\0')
            .ok_or_else(|| err("invalid \\u escape"))
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Json> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(err("invalid number")),
        }
        let mut float = false;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            float = true;
            if self.digits() == 0 {
                return Err(err("invalid number"));
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            float = true;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(err("invalid number"));
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(err)?;
        if !float {
            if let Ok(v) = text.parse::<i64>() {
                return Ok(Json::Number(v.into()));
            }
            if let Ok(v) = text.parse::<u64>() {
                return Ok(Json::Number(v.into()));
            }
        }
        let f: f64 = text.parse().map_err(err)?;
        Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| err("number out of range"))
    }

    fn keyword(&mut self) -> Result<Json> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_alphanumeric) {
            self.i += 1;
        }
        match &self.s[start..self.i] {
            b"true" => Ok(Json::Bool(true)),
            b"false" => Ok(Json::Bool(false)),
            b"null" => Ok(Json::Null),
            w => Err(err(format!(
                "invalid keyword '{}'",
                String::from_utf8_lossy(w)
            ))),
        }
    }
}

/// Parses one JSON value, as `qobject_from_json` does: blanks around it, nothing else.
pub(super) fn parse(text: &str) -> Result<Json> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    if p.peek().is_some() {
        return Err(err("expecting at most one JSON value"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_quotes_escapes_and_numbers_as_qemu_reads_them() {
        assert_eq!(
            parse(r#"{'qom-type':'memory-backend-shm', "id" : 'm"1', 'n':[0,-1,18446744073709551615,1.5]}"#)
                .unwrap(),
            json!({"qom-type":"memory-backend-shm","id":"m\"1","n":[0,-1,18446744073709551615u64,1.5]})
        );
        assert_eq!(parse(r#"'it\'s'"#).unwrap(), json!("it's"));
        assert_eq!(parse(r#""\u00e9\ud83d\ude00""#).unwrap(), json!("é😀"));
    }

    #[test]
    fn what_qemu_refuses() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert_eq!(e(r#"{"a":1,"a":2}"#), "JSON parse error, duplicate key");
        assert!(e(r#"{"a":1,}"#).starts_with("JSON parse error, "));
        assert!(e("{\"a\":\"x\ny\"}").starts_with("JSON parse error, "));
        assert!(e(r#"{"a":01}"#).starts_with("JSON parse error, "));
        assert!(e(r#"{"a":1} {}"#).starts_with("JSON parse error, "));
        assert!(e(r#"{"a":nope}"#).contains("invalid keyword 'nope'"));
        assert!(e(&"[".repeat(5000)).starts_with("JSON parse error, "));
    }
}
