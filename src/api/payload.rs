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

/// A JSON answer serialised beforehand (off the async workers, for large
/// ones), documented as `T`.
pub struct JsonBytes<T>(pub Vec<u8>, pub std::marker::PhantomData<T>);

impl<T: ToJSON> JsonBytes<T> {
    pub fn of(value: &T) -> Self {
        JsonBytes(
            serde_json::to_vec(&value.to_json()).unwrap_or_default(),
            std::marker::PhantomData,
        )
    }
}

impl<T: Type> Payload for JsonBytes<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for JsonBytes<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(self.0)
    }
}

impl<T: Type + Send> poem_openapi::ApiResponse for JsonBytes<T> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        poem_openapi::registry::MetaResponses {
            responses: vec![poem_openapi::registry::MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![poem_openapi::registry::MetaMediaType {
                    content_type: "application/json; charset=utf-8",
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// A JSON request body taken as bytes, documented as `T`: the handler
/// parses it where it chooses (off the async workers, for large ones).
pub struct RawJson<T>(pub bytes::Bytes, pub std::marker::PhantomData<T>);

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        super::is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> poem_openapi::payload::ParsePayload for RawJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(
        _request: &poem::Request,
        body: &mut poem::RequestBody,
    ) -> poem::Result<Self> {
        // The outer endpoint has read the body into memory, within limits.
        let body = body.take()?;
        Ok(RawJson(body.into_bytes().await?, std::marker::PhantomData))
    }
}

poem_openapi::impl_apirequest_for_payload!(RawJson<T>, T: Type);

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
