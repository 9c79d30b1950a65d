//! `GET /v1/crl` (DER, `application/pkix-crl`, the form RFC 5280 §4.2.1.13 distribution
//! points serve) and `GET /v1/crl.pem`: the one signed CRL, however it is stored.
//!
//! Served from the watched copy (`state::crl`) on every replica, so relying parties need
//! no API access. Anything but a whole, checked CRL is a 503 with the reason: a relying
//! party keeps its last good list rather than take a wrong one.

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;

use crate::{pki::crl_pem, state::crl::Served};

/// The CRL routes, reading `served`.
pub fn routes(served: watch::Receiver<Served>) -> Router {
    Router::new()
        .route("/v1/crl", get(der))
        .route("/v1/crl.pem", get(pem))
        .with_state(served)
}

fn respond(served: &watch::Receiver<Served>, as_pem: bool) -> Response {
    let current = served.borrow().clone();
    match current {
        Served::Listed { number, der } => {
            let (content_type, body) = if as_pem {
                ("application/x-pem-file", crl_pem(&der).into_bytes())
            } else {
                ("application/pkix-crl", der.to_vec())
            };
            let etag = HeaderValue::from_str(&format!("\"{number}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
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
        Served::Damaged { detail } => unavailable(&format!("the stored CRL cannot be read: {detail}")),
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

async fn der(State(served): State<watch::Receiver<Served>>) -> Response {
    respond(&served, false)
}

async fn pem(State(served): State<watch::Receiver<Served>>) -> Response {
    respond(&served, true)
}
