//! Extractors wrapping axum's so that every rejection is an [`ApiError`]
//! (JSON body, never a plain-text or 500 answer to a client mistake).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `axum::Json` with [`ApiError`] rejections (400, 413, 415), and a body
/// that must be a JSON object: serde would otherwise also accept a struct
/// as an array of its fields in order (`[true, true]` for
/// `{"pull_sync": true, "force": true}`).
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = read_body(req, state).await?;
        json_object(headers, bytes, state).await.map(Self)
    }
}

/// The whole body, within the `DefaultBodyLimit` (413 beyond).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|r| ApiError::from_rejection(r.status(), r.body_text()))
}

/// Decodes `bytes` as `Json` would (content type 415, syntax and shape
/// 400), then insists on an object.
async fn json_object<T: DeserializeOwned, S: Send + Sync>(
    headers: HeaderMap,
    bytes: Bytes,
    state: &S,
) -> Result<T, ApiError> {
    let is_object = bytes.trim_ascii_start().first() == Some(&b'{');
    // `Json` only looks at the content type and the body.
    let mut req = Request::new(Body::from(bytes));
    *req.headers_mut() = headers;
    let value = match Json::<T>::from_request(req, state).await {
        Ok(Json(v)) => v,
        Err(r) => return Err(ApiError::from_rejection(r.status(), r.body_text())),
    };
    if is_object {
        Ok(value)
    } else {
        Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_owned(),
        ))
    }
}

/// Like [`ApiJson`], but an empty body (no bytes at all) stands for
/// `T::default()`, so that `POST` actions whose options all have defaults
/// can be called without a body. A non-empty body must be JSON as usual.
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        json_object(headers, bytes, state).await.map(Self)
    }
}

/// `axum::extract::Query` with [`ApiError`] rejections (400).
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::from_rejection(r.status(), r.body_text())),
        }
    }
}

/// `axum::extract::Path` with [`ApiError`] rejections (400).
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::from_rejection(r.status(), r.body_text())),
        }
    }
}
