//! How a path, a file name or a process's command line is shown in logs,
//! messages, results and audit records: losslessly and on one line.
//!
//! [`Escaped`] is the one place that does it. Valid UTF-8 is kept as it
//! is, except:
//!
//! * a backslash is shown as `\\` (so what follows cannot be mistaken for
//!   an escape);
//! * control characters (newline, carriage return, tab, escape, DEL, the C1
//!   range, ...) are shown as `\n`, `\r`, `\t` or `\u{1b}`: a file name with
//!   a newline cannot start a forged log line, nor an escape sequence
//!   repaint a terminal;
//! * bytes that are not UTF-8 are shown as `\xNN`: two names that differ
//!   only in invalid bytes stay different, and nothing is replaced by
//!   `U+FFFD`.
//!
//! Unescaping the text gives back the exact bytes. [`Escaped`] serializes
//! as that string too, so a path field of a result or report never fails
//! to serialize (serde refuses a `PathBuf` that is not UTF-8) and a whole
//! result is never lost to one odd file name: use
//! `#[serde(serialize_with = "escape::path")]` (or [`paths`],
//! [`opt_path`]) on such fields.
//!
//! [`ShowPath::escaped`] is the short way to write it:
//! `tracing::info!(path = %dir.escaped(), "...")`.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Serialize, Serializer};

/// Bytes shown losslessly on one line (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Escaped<'a>(&'a [u8]);

impl<'a> Escaped<'a> {
    /// A path, whatever its bytes.
    pub fn path(p: &'a Path) -> Self {
        Escaped(p.as_os_str().as_bytes())
    }

    /// Text that may carry control characters (a command line, a name
    /// read from the system).
    pub fn text(s: &'a str) -> Self {
        Escaped(s.as_bytes())
    }

    /// Raw bytes (a `/proc/<pid>/cmdline` argument).
    pub fn bytes(b: &'a [u8]) -> Self {
        Escaped(b)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let valid = chunk.valid();
            let mut start = 0;
            for (i, c) in valid.char_indices() {
                let esc = match c {
                    '\\' => Some("\\\\"),
                    '\n' => Some("\\n"),
                    '\r' => Some("\\r"),
                    '\t' => Some("\\t"),
                    c if c.is_control() => None,
                    _ => continue,
                };
                f.write_str(&valid[start..i])?;
                match esc {
                    Some(e) => f.write_str(e)?,
                    None => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                }
                start = i + c.len_utf8();
            }
            f.write_str(&valid[start..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for Escaped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `.escaped()` on paths and text: the [`Escaped`] form to log or show.
pub trait ShowPath {
    /// This value as [`Escaped`] shows it.
    fn escaped(&self) -> Escaped<'_>;
}

impl ShowPath for Path {
    fn escaped(&self) -> Escaped<'_> {
        Escaped::path(self)
    }
}

impl ShowPath for std::path::PathBuf {
    fn escaped(&self) -> Escaped<'_> {
        Escaped::path(self)
    }
}

impl ShowPath for std::ffi::OsStr {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_bytes())
    }
}

impl ShowPath for str {
    fn escaped(&self) -> Escaped<'_> {
        Escaped::text(self)
    }
}

impl ShowPath for String {
    fn escaped(&self) -> Escaped<'_> {
        Escaped::text(self)
    }
}

/// Serializes a path as its [`Escaped`] text (for `serialize_with`).
pub fn path<P: AsRef<Path>, S: Serializer>(p: &P, s: S) -> Result<S::Ok, S::Error> {
    Escaped::path(p.as_ref()).serialize(s)
}

/// Serializes a list of paths as their [`Escaped`] texts.
pub fn paths<P: AsRef<Path>, S: Serializer>(ps: &[P], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| Escaped::path(p.as_ref())))
}

/// Serializes an optional path as its [`Escaped`] text, or null.
pub fn opt_path<P: AsRef<Path>, S: Serializer>(p: &Option<P>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => Escaped::path(p.as_ref()).serialize(s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn shown(b: &[u8]) -> String {
        Escaped::bytes(b).to_string()
    }

    /// The inverse of [`Escaped`], for the round-trip test.
    fn unescape(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c != '\\' {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            match it.next() {
                Some('\\') => out.push(b'\\'),
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('t') => out.push(b'\t'),
                Some('x') => {
                    let h: String = it.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&h, 16).unwrap());
                }
                Some('u') => {
                    assert_eq!(it.next(), Some('{'));
                    let h: String = it.by_ref().take_while(|c| *c != '}').collect();
                    let c = char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap();
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => panic!("bad escape {other:?}"),
            }
        }
        out
    }

    #[test]
    fn plain_text_is_kept_as_is() {
        assert_eq!(shown(b"/var/tmp/job-1/out.log"), "/var/tmp/job-1/out.log");
        assert_eq!(shown("/données/été ✓".as_bytes()), "/données/été ✓");
        assert_eq!(shown(b""), "");
    }

    #[test]
    fn a_newline_cannot_start_a_forged_log_line() {
        let name = b"/tmp/x\n2026-01-01T00:00:00Z INFO forged";
        let s = shown(name);
        assert!(!s.contains('\n'), "{s}");
        assert_eq!(s, "/tmp/x\\n2026-01-01T00:00:00Z INFO forged");
        assert_eq!(shown(b"a\rb\tc\x1b[2Jd\x7f"), "a\\rb\\tc\\u{1b}[2Jd\\u{7f}");
        // C1 controls (U+0085 is a line break to some readers).
        assert_eq!(shown("a\u{85}b".as_bytes()), "a\\u{85}b");
    }

    #[test]
    fn invalid_utf8_is_shown_byte_by_byte() {
        assert_eq!(shown(b"/tmp/bad\xff\xfe.txt"), "/tmp/bad\\xff\\xfe.txt");
        // A truncated sequence: each byte kept.
        assert_eq!(shown(b"a\xc3"), "a\\xc3");
        // Two names that differ only in invalid bytes stay different.
        assert_ne!(shown(b"x\xff"), shown(b"x\xfe"));
        let p = Path::new(OsStr::from_bytes(b"/srv/\xe9t\xe9"));
        assert_eq!(p.escaped().to_string(), "/srv/\\xe9t\\xe9");
    }

    #[test]
    fn a_backslash_is_escaped_so_nothing_is_ambiguous() {
        assert_eq!(shown(b"a\\xff"), "a\\\\xff");
        assert_ne!(shown(b"a\\xff"), shown(b"a\xff"));
    }

    #[test]
    fn escaping_round_trips_every_byte_string() {
        let mut samples: Vec<Vec<u8>> = vec![
            (0u8..=255).collect(),
            b"\\\\n\n\\x41\xff".to_vec(),
            "é\u{85}\u{2028}z".as_bytes().to_vec(),
        ];
        samples.extend((0u8..=255).map(|b| vec![b'a', b, b'z']));
        for s in samples {
            let text = shown(&s);
            assert!(!text.chars().any(char::is_control), "{text}");
            assert_eq!(unescape(&text), s, "{text}");
        }
    }

    #[test]
    fn serializing_never_fails_on_a_path_that_is_not_utf8() {
        #[derive(Serialize)]
        struct R {
            #[serde(serialize_with = "path")]
            one: std::path::PathBuf,
            #[serde(serialize_with = "paths")]
            many: Vec<std::path::PathBuf>,
            #[serde(serialize_with = "opt_path")]
            maybe: Option<std::path::PathBuf>,
        }
        let bad = std::path::PathBuf::from(OsStr::from_bytes(b"/tmp/\xff\nx"));
        let r = R {
            one: bad.clone(),
            many: vec![bad.clone(), "/ok".into()],
            maybe: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["one"], "/tmp/\\xff\\nx");
        assert_eq!(v["many"][1], "/ok");
        assert!(v["maybe"].is_null());
        // What serde does with the plain PathBuf: the whole value is lost.
        assert!(serde_json::to_value(&bad).is_err());
    }
}
