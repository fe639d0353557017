//! kombu's JSON dialect: Python `json.dumps` formatting and the `__type__` markers
//! (PROTOCOL.md sections 3.1 and 3.2).

use serde_json::Value;
use serde_json::ser::Formatter;
use std::io;

/// Serialize a value exactly as Python's `json.dumps` (kombu's defaults) would:
/// separators `", "` and `": "`, `ensure_ascii` (every non-ASCII character written as
/// `\uXXXX`, surrogate pairs above the BMP), keys in insertion order.
///
/// ```
/// use celeriac::protocol::kombu::to_python_json;
/// let v = serde_json::json!({"a": [1, 2], "é": null});
/// assert_eq!(to_python_json(&v), r#"{"a": [1, 2], "\u00e9": null}"#);
/// ```
pub fn to_python_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(value, &mut ser).expect("serializing a Value into memory cannot fail");
    // The formatter only ever writes ASCII.
    String::from_utf8(out).expect("python-style JSON is ASCII")
}

/// Python `json.dumps` separators and `ensure_ascii` escaping.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for ch in fragment.chars() {
            if ch.is_ascii() {
                w.write_all(&[ch as u8])?;
            } else {
                for unit in ch.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        // Python's repr(float): NaN/inf are written as bare words by json.dumps.
        if value.is_nan() {
            return w.write_all(b"NaN");
        }
        if value.is_infinite() {
            return w.write_all(if value > 0.0 { b"Infinity" } else { b"-Infinity" });
        }
        let s = format!("{value:?}");
        // Rust's Debug gives `1e16` / `1e-5` where Python gives `1e+16` / `1e-05`.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
                write!(w, "{m}e{sign}{digits:0>2}")
            }
            None => w.write_all(s.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separators_and_order_match_python() {
        let v = json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
        assert_eq!(
            to_python_json(&v),
            r#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
    }

    #[test]
    fn non_ascii_is_escaped_like_ensure_ascii() {
        // json.dumps("héllo 😀\n") == '"h\\u00e9llo \\ud83d\\ude00\\n"'
        assert_eq!(to_python_json(&json!("héllo 😀\n")), r#""h\u00e9llo \ud83d\ude00\n""#);
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        assert_eq!(to_python_json(&json!(1.0)), "1.0");
        assert_eq!(to_python_json(&json!(0.1)), "0.1");
        assert_eq!(to_python_json(&json!(1e16)), "1e+16");
        assert_eq!(to_python_json(&json!(1.5e-7)), "1.5e-07");
        assert_eq!(to_python_json(&json!(1e100)), "1e+100");
        assert_eq!(to_python_json(&json!(1e15)), "1000000000000000.0");
    }
}
