//! `JsonArray`: a JSON array answer written one element at a time.
//!
//! poem-openapi's `Json<Vec<T>>` turns the whole list into one
//! `serde_json::Value` tree before writing it: for 10,000 nodes that is tens
//! of megabytes of small allocations at once, a peak the allocator keeps long
//! after the answer is sent. This payload documents the same schema
//! (an array of `T`) and writes the same bytes, converting one element at a
//! time into a single output buffer.

use poem::{IntoResponse, Response};
use poem_openapi::{
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};

pub struct JsonArray<T>(pub Vec<T>);

impl<T: Type> Payload for JsonArray<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        Vec::<T>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Vec::<T>::register(registry);
    }
}

impl<T: ToJSON> IntoResponse for JsonArray<T> {
    fn into_response(self) -> Response {
        let mut out = Vec::with_capacity(2 + self.0.len() * 256);
        out.push(b'[');
        for (i, item) in self.0.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &item.to_json());
        }
        out.push(b']');
        Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .body(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_what_json_of_a_vec_writes() {
        let items = vec![
            serde_json::json!({"a": 1, "b": [true, null]}),
            serde_json::json!("x\"y"),
        ];
        for list in [vec![], items] {
            let ours = JsonArray(list.clone()).into_response();
            let theirs = poem_openapi::payload::Json(list).into_response();
            assert_eq!(ours.content_type(), theirs.content_type());
            let ours = ours.into_body().into_bytes().await.unwrap();
            let theirs = theirs.into_body().into_bytes().await.unwrap();
            assert_eq!(ours, theirs);
        }
    }
}
