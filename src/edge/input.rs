//! Typed request input with the contract's errors (§9). The request types themselves are in
//! `edge::bodies`; this module holds the building blocks they are made of and the parsers.
//!
//! A body is parsed in two steps, so that a syntax error anywhere wins over a shape error:
//! the bytes become a `serde_json::Value` (`Invalid JSON`), then the value becomes the typed
//! body through `serde_path_to_error`, whose path is the JSON Pointer of
//! `Invalid request body` (`[0].conversationId` → `/0/conversationId`). Unknown fields are
//! ignored and an explicit `null` is the same as an absent field (an `Option`), as before.
//!
//! The limits are part of the types (`Text`, `NonEmpty`, `Content`, `Batch`), so they fail
//! during deserialization with the pointer of the offending value and appear in the JSON
//! Schema of the OpenAPI document (`maxLength`, `minLength`, `maxItems`).
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use crate::error::{AppError, AppResult};
use crate::service::limits::{MAX_BATCH, MAX_CONTENT_BYTES};

/// The message `Batch` fails with when it holds more than `MAX_BATCH` items; turned into
/// `Too many items` by `typed`.
const TOO_MANY: &str = "too many items";

/// The body's bytes as JSON: `Invalid JSON` when empty (whitespace only) or malformed.
pub fn json(body: &[u8]) -> AppResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::InvalidJson);
    }
    serde_json::from_slice(body).map_err(|_| AppError::InvalidJson)
}

/// A JSON value as the typed body `T`, with the contract's errors.
pub fn typed<'a, T: Deserialize<'a>>(v: &'a Value) -> AppResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let message = e.inner().to_string();
        if message == TOO_MANY {
            return AppError::TooManyItems;
        }
        let mut field = pointer(e.path());
        // A missing field is reported by serde on its object, with the field's name in the
        // message of `de::Error::missing_field`; the pointer names the field itself.
        if let Some(name) = missing_field(&message) {
            push_token(&mut field, name);
        }
        AppError::invalid_body(field)
    })
}

/// The body's bytes as the typed body `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    typed(&json(body)?)
}

/// The field name in serde's `missing field `name`` message (`de::Error::missing_field`).
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// RFC 6901: `~` is written `~0` and `/` is written `~1`.
fn push_token(ptr: &mut String, token: &str) {
    ptr.push('/');
    ptr.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

fn pointer(path: &serde_path_to_error::Path) -> String {
    let mut ptr = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => push_token(&mut ptr, &index.to_string()),
            Segment::Map { key } => push_token(&mut ptr, key),
            Segment::Enum { variant } => push_token(&mut ptr, variant),
            Segment::Unknown => break,
        }
    }
    ptr
}

/// A query string's parameters (§9 `Invalid query parameter`): the type's fields, each
/// named in `NAMES` so that an error can name it.
pub trait Query: DeserializeOwned + JsonSchema {
    /// The parameter names, as serde spells them.
    const NAMES: &'static [&'static str];
    /// The names among them that are comma-separated lists (`style: form, explode: false`).
    /// They reach serde as arrays of entries.
    const LISTS: &'static [&'static str] = &[];
}

/// A raw query string as `T`. Values are percent-decoded with `+` as a space (an invalid
/// encoding reads as empty); the first occurrence of a name wins; unknown names are ignored.
/// A list is split on its literal commas *before* decoding: a comma inside an entry is sent
/// as `%2C` and stays in the entry.
pub fn query<T: Query>(raw: Option<&str>) -> AppResult<T> {
    let decode = |v: &str| percent_decode(&v.replace('+', " ")).unwrap_or_default();
    let mut map = Map::new();
    for pair in raw.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !map.contains_key(k) {
            let v = if T::LISTS.contains(&k) {
                Value::Array(v.split(',').map(|e| Value::String(decode(e))).collect())
            } else {
                Value::String(decode(v))
            };
            map.insert(k.to_string(), v);
        }
    }
    let v = Value::Object(map);
    serde_path_to_error::deserialize(&v).map_err(|e| {
        let name = match e.path().iter().next() {
            Some(Segment::Map { key }) => T::NAMES.iter().find(|n| **n == key.as_str()),
            _ => None,
        };
        AppError::InvalidQuery {
            field: name.copied().unwrap_or_default(),
        }
    })
}

/// What a string with U+0000 gets told. PostgreSQL cannot store the character in text at
/// all (it answered with a 500); it is refused on every database alike, so that one API does
/// not take a string on SQLite and MariaDB that it cannot take on PostgreSQL.
const NO_NUL: &str = "a string without U+0000";

/// The JSON Schema `pattern` of every string the API takes: no U+0000 (see `NO_NUL`).
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// A string whose length is checked: `min..=max` characters, or bytes when `bytes`; U+0000
/// is refused (see `NO_NUL`).
struct Str {
    min: usize,
    max: usize,
    bytes: bool,
}

impl<'de> Visitor<'de> for Str {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let unit = if self.bytes { "bytes" } else { "characters" };
        write!(f, "a string of {} to {} {unit}", self.min, self.max)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        if s.contains('\0') {
            return Err(E::invalid_value(de::Unexpected::Str(s), &NO_NUL));
        }
        let len = if self.bytes {
            s.len()
        } else {
            s.chars().count()
        };
        if len < self.min || len > self.max {
            return Err(E::invalid_length(len, &self));
        }
        Ok(s.to_owned())
    }
}

fn string<'de, D: Deserializer<'de>>(d: D, min: usize, max: usize) -> Result<String, D::Error> {
    d.deserialize_str(Str {
        min,
        max,
        bytes: false,
    })
}

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $min:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name<const MAX: usize>(pub String);

        impl<'de, const MAX: usize> Deserialize<'de> for $name<MAX> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                string(d, $min, MAX).map($name)
            }
        }

        impl<const MAX: usize> JsonSchema for $name<MAX> {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                format!("{}{MAX}", stringify!($name)).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                if $min == 0 {
                    json_schema!({"type": "string", "maxLength": MAX, "pattern": NO_NUL_PATTERN})
                } else {
                    json_schema!({
                        "type": "string",
                        "minLength": $min,
                        "maxLength": MAX,
                        "pattern": NO_NUL_PATTERN,
                    })
                }
            }
        }

        impl<const MAX: usize> From<$name<MAX>> for String {
            fn from(s: $name<MAX>) -> String {
                s.0
            }
        }

        impl<const MAX: usize> Deref for $name<MAX> {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_type!(
    /// A string of at most `MAX` characters; may be empty.
    Text,
    0
);
string_type!(
    /// A string of 1 to `MAX` characters.
    NonEmpty,
    1
);

/// Message and notification content: at most `MAX_CONTENT_BYTES` UTF-8 bytes (§9); may be
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content(pub String);

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Str {
            min: 0,
            max: MAX_CONTENT_BYTES,
            bytes: true,
        })
        .map(Content)
    }
}

impl JsonSchema for Content {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Content".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // `maxLength` counts characters; the byte limit is stricter for non-ASCII text.
        json_schema!({
            "type": "string",
            "maxLength": MAX_CONTENT_BYTES,
            "pattern": NO_NUL_PATTERN,
            "description": format!("At most {MAX_CONTENT_BYTES} UTF-8 bytes."),
        })
    }
}

impl From<Content> for String {
    fn from(c: Content) -> String {
        c.0
    }
}

/// A boolean that also accepts the numbers `0` and `1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean, 0 or 1")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Flag, E> {
                Ok(Flag(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Flag, E> {
                match n {
                    0 => Ok(Flag(false)),
                    1 => Ok(Flag(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Flag, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Flag {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["boolean", "integer"], "enum": [false, true, 0, 1]})
    }
}

/// A batch body (§9): a JSON array of at most `MAX_BATCH` items. `Too many items` is
/// decided on the array's length, before any item is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Batch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Batch<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {MAX_BATCH} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch<T>, A::Error> {
                let hint = seq.size_hint().unwrap_or_default();
                if hint > MAX_BATCH {
                    return Err(de::Error::custom(TOO_MANY));
                }
                let mut items = Vec::with_capacity(hint);
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX_BATCH {
                        return Err(de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Batch(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Batch<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Batch_of_{}", T::schema_name()).into()
    }

    fn schema_id() -> Cow<'static, str> {
        format!("Batch<{}>", T::schema_id()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": generator.subschema_for::<T>(),
            "maxItems": MAX_BATCH,
        })
    }
}

/// Rules across the fields of an object, checked right after the object is read.
pub trait Rules {
    /// `Err(name)`: the field `name` is required in this object (e.g. `conversationId`
    /// unless `id` is given); it is reported like a missing field, with its pointer.
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A JSON object read as `T` (a derived struct). Unlike a bare derived struct it does not
/// accept an array of the field values in order: anything but an object is an invalid body
/// at the object's pointer. Then `T`'s `Rules` are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de> + Rules> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Rules> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                let t = T::deserialize(MapAccessDeserializer::new(map))?;
                t.check().map_err(de::Error::missing_field)?;
                Ok(Obj(t))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Obj<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A whole number given as query text, `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Number<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Number<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> Visitor<'_> for V<MIN, MAX> {
            type Value = Number<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a whole number from {MIN} to {MAX}")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&n) {
                    Ok(Number(n))
                } else {
                    Err(E::invalid_value(de::Unexpected::Unsigned(n), &self))
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V::<MIN, MAX>)
    }
}

impl<const MIN: u64, const MAX: u64> JsonSchema for Number<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Number{MIN}to{MAX}").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// A path parameter, percent-decoded (§9); `None` (no route: 404) for a `%` not followed by
/// two hex digits, which the crate would pass through as it is, or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        conversation_id: NonEmpty<4>,
        #[serde(rename = "a/b~c")]
        odd: Option<Text<2>>,
        flag: Option<Flag>,
        content: Option<Content>,
    }
    impl Rules for Item {}

    fn err<T: DeserializeOwned + fmt::Debug>(v: Value) -> AppError {
        match typed::<T>(&v) {
            Err(e) => e,
            Ok(t) => panic!("accepted {v}: {t:?}"),
        }
    }

    fn field<T: DeserializeOwned + fmt::Debug>(v: Value) -> String {
        match err::<T>(v) {
            AppError::InvalidBody { field } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pointers_name_the_offending_value() {
        type B = Batch<Obj<Item>>;
        assert_eq!(
            field::<B>(json!([{"conversationId": "x"}, {"conversationId": 5}])),
            "/1/conversationId"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": "x"}, {}])),
            "/1/conversationId"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": ""}])),
            "/0/conversationId"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": null}])),
            "/0/conversationId"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": "abcde"}])),
            "/0/conversationId"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": "x", "a/b~c": "abc"}])),
            "/0/a~1b~0c"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": "x", "flag": 2}])),
            "/0/flag"
        );
        assert_eq!(
            field::<B>(json!([{"conversationId": "x", "flag": 1.0}])),
            "/0/flag"
        );
        assert_eq!(field::<B>(json!([["x"]])), "/0");
        assert_eq!(field::<B>(json!([5])), "/0");
        assert_eq!(field::<B>(json!({"conversationId": "x"})), "");
        assert_eq!(field::<Obj<Item>>(json!([])), "");
        assert_eq!(field::<Obj<Item>>(json!({})), "/conversationId");
        let many: Vec<Value> = (0..=MAX_BATCH).map(|_| json!(5)).collect();
        assert!(matches!(err::<B>(json!(many)), AppError::TooManyItems));
        // Characters, not bytes; content in bytes.
        let ok: B =
            typed(&json!([{"conversationId": "éééé", "a/b~c": null, "flag": 0}])).expect("valid");
        let item = &ok.0[0].0;
        assert_eq!(&*item.conversation_id, "éééé");
        assert_eq!(
            (&item.odd, item.flag, &item.content),
            (&None, Some(Flag(false)), &None)
        );
        let content = "é".repeat(MAX_CONTENT_BYTES / 2);
        assert!(typed::<B>(&json!([{"conversationId": "x", "content": content}])).is_ok());
        let content = "é".repeat(MAX_CONTENT_BYTES / 2 + 1);
        assert_eq!(
            field::<B>(json!([{"conversationId": "x", "content": content}])),
            "/0/content"
        );
        assert!(matches!(parse::<B>(b" \n"), Err(AppError::InvalidJson)));
        assert!(matches!(parse::<B>(b"[{}, {"), Err(AppError::InvalidJson)));
    }

    #[test]
    fn serde_names_a_missing_field_in_its_message() {
        let e = <serde_json::Error as de::Error>::missing_field("conversationId");
        assert_eq!(missing_field(&e.to_string()), Some("conversationId"));
        let e = <serde_json::Error as de::Error>::custom(TOO_MANY);
        assert_eq!(e.to_string(), TOO_MANY);
    }

    #[test]
    fn u0000_is_refused_in_every_kind_of_string() {
        type B = Batch<Obj<Item>>;
        let ok = json!([{"conversationId": "x", "a/b~c": "\\0", "content": "\\u0000"}]);
        assert!(typed::<B>(&ok).is_ok(), "the escaped text is not U+0000");
        for (v, at) in [
            (json!([{"conversationId": "x\u{0}"}]), "/0/conversationId"),
            (
                json!([{"conversationId": "x", "a/b~c": "\u{0}"}]),
                "/0/a~1b~0c",
            ),
            (
                json!([{"conversationId": "x", "content": "a\u{0}b"}]),
                "/0/content",
            ),
        ] {
            assert_eq!(field::<B>(v), at);
        }
    }

    #[test]
    fn schemas_state_the_limits() {
        let mut g = SchemaGenerator::default();
        let s = serde_json::to_value(Batch::<Obj<Item>>::json_schema(&mut g)).unwrap_or_default();
        assert_eq!(s["maxItems"], MAX_BATCH);
        let defs = serde_json::to_value(g.definitions()).unwrap_or_default();
        let item = &defs["Item"];
        assert_eq!(item["required"], json!(["conversationId"]));
        assert_eq!(
            item["properties"]["conversationId"],
            json!({"type": "string", "minLength": 1, "maxLength": 4, "pattern": NO_NUL_PATTERN})
        );
        assert_eq!(
            item["properties"]["a/b~c"],
            json!({"type": ["string", "null"], "maxLength": 2, "pattern": NO_NUL_PATTERN})
        );
        // The pattern is a JSON Schema (ECMA-262) regex refusing exactly U+0000.
        assert_eq!(NO_NUL_PATTERN, r"^[^\u0000]*$");
    }
}
