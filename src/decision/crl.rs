//! `GET /v1/crl` (DER, `application/pkix-crl`, the form RFC 5280 §4.2.1.13 distribution
//! points serve) and `GET /v1/crl.pem`: the one signed CRL, however it is stored.
//!
//! Served from the watched copy (`state::crl`) on every replica, so relying parties need
//! no API access. Anything but a whole, checked CRL is a 503 with the reason: a relying
//! party keeps its last good list rather than take a wrong one.

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;

use crate::state::crl::Served;

/// The CRL routes, reading `served`.
pub fn routes(served: watch::Receiver<Served>) -> Router {
    Router::new()
        .route("/v1/crl", get(der))
        .route("/v1/crl.pem", get(pem))
        .with_state(served)
}

fn respond(served: &watch::Receiver<Served>, if_none_match: Option<&HeaderValue>, as_pem: bool) -> Response {
    let current = served.borrow().clone();
    match current {
        Served::Listed(crl) => {
            let etag =
                HeaderValue::from_str(&format!("\"{}\"", crl.number)).unwrap_or(HeaderValue::from_static("\"0\""));
            // Relying parties poll: one that has this CRL already gets no body.
            if if_none_match == Some(&etag) {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
            }
            let (content_type, body) = if as_pem {
                ("application/x-pem-file", crl.pem())
            } else {
                ("application/pkix-crl", crl.der.clone())
            };
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (header::ETAG, etag),
                ],
                body,
            )
                .into_response()
        }
        Served::Loading => unavailable("the CRL has not been read yet"),
        Served::Absent => unavailable("no CRL is stored yet"),
        // The detail (which part, which hash) is in the operator's log and its
        // CrlUnreadable condition; an anonymous client learns only that it is damaged.
        Served::Damaged { .. } => unavailable("the stored CRL cannot be read; it is not served until it is fixed"),
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

async fn der(State(served): State<watch::Receiver<Served>>, headers: HeaderMap) -> Response {
    respond(&served, headers.get(header::IF_NONE_MATCH), false)
}

async fn pem(State(served): State<watch::Receiver<Served>>, headers: HeaderMap) -> Response {
    respond(&served, headers.get(header::IF_NONE_MATCH), true)
}
