//! Request-body checks with the contract's errors: `Invalid JSON` for syntax, and
//! `Invalid request body` with a JSON Pointer to the first offending value for shape.
//! Unknown fields are ignored; an explicit `null` is the same as an absent field.
use serde_json::{Map, Value};

use crate::error::{AppError, AppResult};

pub fn parse(body: &[u8]) -> AppResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::InvalidJson);
    }
    serde_json::from_slice(body).map_err(|_| AppError::InvalidJson)
}

/// A batch body: a JSON array of at most `max` items.
pub fn array(v: &Value, max: usize) -> AppResult<&Vec<Value>> {
    let items = v.as_array().ok_or_else(|| AppError::invalid_body(""))?;
    if items.len() > max {
        return Err(AppError::TooManyItems);
    }
    Ok(items)
}

/// One JSON object and the pointer to it.
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    ptr: String,
}

impl<'a> Obj<'a> {
    pub fn new(v: &'a Value, ptr: String) -> AppResult<Self> {
        match v {
            Value::Object(map) => Ok(Self { map, ptr }),
            _ => Err(AppError::InvalidBody { field: ptr }),
        }
    }

    fn field(&self, key: &str) -> String {
        format!("{}/{}", self.ptr, key.replace('~', "~0").replace('/', "~1"))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// An optional string of at most `max` characters.
    pub fn opt_str(&self, key: &str, max: usize) -> AppResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
            Some(_) => Err(AppError::invalid_body(self.field(key))),
        }
    }

    /// A required, non-empty string of at most `max` characters.
    pub fn req_str(&self, key: &str, max: usize) -> AppResult<String> {
        match self.opt_str(key, max)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(AppError::invalid_body(self.field(key))),
        }
    }

    /// A required string that may be empty.
    pub fn req_str_any(&self, key: &str, max: usize) -> AppResult<String> {
        self.opt_str(key, max)?
            .ok_or_else(|| AppError::invalid_body(self.field(key)))
    }

    /// An optional boolean; `0` and `1` are accepted too.
    pub fn opt_bool(&self, key: &str) -> AppResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
            Some(_) => Err(AppError::invalid_body(self.field(key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_name_the_offending_value() {
        let v = json!([{"a": "x"}, {"a": 5, "b": null}]);
        let items = array(&v, 100).unwrap();
        let o = Obj::new(&items[1], "/1".into()).unwrap();
        match o.opt_str("a", 10) {
            Err(AppError::InvalidBody { field }) => assert_eq!(field, "/1/a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(o.opt_str("b", 10).unwrap(), None);
        assert!(matches!(parse(b" "), Err(AppError::InvalidJson)));
        assert!(matches!(parse(b"{"), Err(AppError::InvalidJson)));
        assert!(matches!(
            array(&json!({}), 1),
            Err(AppError::InvalidBody { .. })
        ));
        assert!(matches!(
            array(&json!([1, 2]), 1),
            Err(AppError::TooManyItems)
        ));
        let v = json!({"f": 1, "t": 0, "s": "é"});
        let o = Obj::new(&v, String::new()).unwrap();
        assert_eq!(o.opt_bool("f").unwrap(), Some(true));
        assert_eq!(o.opt_bool("t").unwrap(), Some(false));
        assert_eq!(o.req_str("s", 1).unwrap(), "é");
    }
}
