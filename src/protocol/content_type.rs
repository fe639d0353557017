//! Serializers, chosen per message by content type (PROTOCOL.md section 3).

use serde_json::Value;

/// A body serializer Celery and kombu know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serializer {
    /// `application/json`, kombu's JSON with its type markers.
    #[default]
    Json,
    /// `application/x-msgpack`.
    Msgpack,
}

impl Serializer {
    /// The serializer for a content type, `None` when it is not one we accept.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        todo!("protocol helper: {content_type}")
    }
    /// The mime type written in `content_type`.
    pub fn content_type(self) -> &'static str {
        todo!()
    }
    /// The value written in `content_encoding` (`utf-8` or `binary`).
    pub fn content_encoding(self) -> &'static str {
        todo!()
    }
    /// Serialize a value the way kombu does.
    pub fn serialize(self, value: &Value) -> Result<Vec<u8>, crate::protocol::encode::EncodeError> {
        todo!("{value}")
    }
    /// Deserialize bytes into a value.
    pub fn deserialize(self, bytes: &[u8]) -> Result<Value, crate::protocol::DecodeError> {
        todo!("{}", bytes.len())
    }
}
