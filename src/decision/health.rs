//! `/livez` and `/readyz` (on the metrics port), and the certificate expiry gauges.
//!
//! Ready means the decision service can answer: every watch it reads has synced, the
//! policy store is built and the CA is usable. Until then every decision is NotReady,
//! so a load balancer should not send calls here.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use k8s_openapi::jiff::Timestamp;

use super::service::Service;
use crate::{metrics::Metrics, state::records::RecordIndex};

pub fn routes(service: Arc<Service>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(service)
}

async fn readyz(State(service): State<Arc<Service>>) -> impl IntoResponse {
    let unsynced = service.unsynced();
    if unsynced.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {}\n", unsynced.join(", ")),
        )
    }
}

/// Keeps the live-certificate gauges current from the revocation record.
pub async fn live_certificates(records: RecordIndex, metrics: Arc<Metrics>) {
    loop {
        let now = Timestamp::now();
        let mut count = 0usize;
        let mut soonest: Option<i64> = None;
        records.select(|r| {
            if r.revoked.is_none() && r.not_after > now {
                count += 1;
                let t = r.not_after.as_second();
                soonest = Some(soonest.map_or(t, |s| s.min(t)));
            }
            false
        });
        metrics.live(count, soonest);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
