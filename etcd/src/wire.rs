//! The gateway's JSON mapping of etcd's protobuf messages: 64-bit integers travel as decimal
//! strings (numbers are accepted too), `bytes` fields as standard base64, zero values are left
//! out, and streams frame each message as one line `{"result": ...}` or `{"error": ...}`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

/// An int64 as the gateway writes it: a decimal string.
pub(crate) fn ser_i64<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Bytes as base64.
pub(crate) fn ser_b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(v))
}

pub(crate) fn is_zero(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a decimal string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
        if v.len() > 20 {
            return Err(E::custom("integer string too long"));
        }
        v.parse()
            .map_err(|_| E::custom(format!("not an integer: {v:?}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<i128, E> {
        Ok(0)
    }
}

/// An int64 from a string or a number (`null`: 0).
pub(crate) fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = d.deserialize_any(IntVisitor)?;
    i64::try_from(v).map_err(|_| de::Error::custom(format!("{v} out of int64 range")))
}

/// A uint64 from a string or a number (`null`: 0).
pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = d.deserialize_any(IntVisitor)?;
    u64::try_from(v).map_err(|_| de::Error::custom(format!("{v} out of uint64 range")))
}

struct B64Visitor;

impl Visitor<'_> for B64Visitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64 string")
    }

    // the text is decoded where it lies (no copy into a String first)
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        B64.decode(v.as_bytes())
            .map_err(|e| E::custom(format!("not base64: {e}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
        Ok(Vec::new())
    }
}

/// Bytes from base64 (`null`: empty).
pub(crate) fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_any(B64Visitor)
}

/// A list of base64 byte strings.
pub(crate) fn de_b64_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let v: Option<Vec<String>> = Option::deserialize(d)?;
    v.unwrap_or_default()
        .iter()
        .map(|s| {
            B64.decode(s.as_bytes())
                .map_err(|e| de::Error::custom(format!("not base64: {e}")))
        })
        .collect()
}

/// A `null`-tolerant list.
pub(crate) fn de_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The error body etcd answers with a non-200 status: `{"error","code","message"}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: i32,
}

impl ErrorBody {
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

/// An error inside a stream (`{"error": {...}}`); grpc-gateway versions spell its fields
/// `grpc_code`/`http_code`/`message` or `code`/`message`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub grpc_code: i32,
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

impl StreamError {
    pub fn code(&self) -> i32 {
        if self.grpc_code != 0 {
            self.grpc_code
        } else {
            self.code
        }
    }

    pub fn text(&self) -> String {
        if !self.message.is_empty() {
            self.message.clone()
        } else if !self.error.is_empty() {
            self.error.clone()
        } else {
            "error without a message".into()
        }
    }
}

/// One message of a gateway stream.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamLine<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "de_i64")]
        a: i64,
        #[serde(default, deserialize_with = "de_u64")]
        b: u64,
        #[serde(default, deserialize_with = "de_b64")]
        c: Vec<u8>,
    }

    #[test]
    fn integers_as_strings_or_numbers_bytes_as_base64() {
        let t: T =
            serde_json::from_str(r#"{"a":"-5","b":"18446744073709551615","c":"Zm9v"}"#).unwrap();
        assert_eq!((t.a, t.b, t.c.as_slice()), (-5, u64::MAX, &b"foo"[..]));
        let t: T = serde_json::from_str(r#"{"a":7,"b":8,"c":null}"#).unwrap();
        assert_eq!((t.a, t.b, t.c.len()), (7, 8, 0));
        let t: T = serde_json::from_str("{}").unwrap();
        assert_eq!((t.a, t.b), (0, 0));
        for bad in [
            r#"{"a":"x"}"#,
            r#"{"a":"9223372036854775808"}"#,
            r#"{"b":"-1"}"#,
            r#"{"c":"!!"}"#,
            r#"{"a":"1111111111111111111111111111111"}"#,
            r#"{"a":[]}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }
}
