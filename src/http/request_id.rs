//! Request ids for the answers that need one: a 500's cause is logged under an id the
//! caller sees too, so an operator finds the log line a user reports.

use actix_web::http::StatusCode;

use crate::error::{ApiError, ErrorCode};

/// When the answer is a 500, logs its cause under a request id and puts the id in the
/// JSON body and the `X-Request-Id` header, so an operator finds the log line a user
/// reports. The id is the caller's `X-Request-Id` when it sent a well-formed one (a
/// UUID), else a new UUID v7. Other answers pass untouched: nothing is added to the
/// webhook path.
pub async fn request_ids<B: actix_web::body::MessageBody + 'static>(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B, actix_web::body::BoxBody>>,
    actix_web::Error,
> {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let given = req
        .headers()
        .get("X-Request-Id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| uuid::Uuid::try_parse(v).is_ok())
        .map(str::to_string);
    let log = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map(|state| state.core.log.clone());
    let res = next.call(req).await?;
    if res.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return Ok(res.map_into_left_body());
    }
    let id = given.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let (code, message, cause) = match res.response().error() {
        Some(error) => match error.as_error::<ApiError>() {
            Some(api) => (api.code, api.message.clone(), api.cause.clone()),
            None => (
                ErrorCode::Internal,
                "internal error".to_string(),
                Some(error.to_string()),
            ),
        },
        None => (ErrorCode::Internal, "internal error".to_string(), None),
    };
    if let Some(log) = &log {
        slog::error!(log, "request failed"; "request_id" => &id, "path" => res.request().path(),
            "cause" => cause.as_deref().unwrap_or("-"));
    }
    let body = serde_json::json!({"error": {
        "code": code,
        "message": message,
        "request_id": id,
    }});
    let mut res = res.map_body(|_, _| actix_web::body::BoxBody::new(body.to_string()));
    res.headers_mut().insert(
        actix_web::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(res.map_into_right_body())
}
