//! Prometheus metrics and health endpoints, served over plain HTTP on `--metrics-listen`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

/// The operator's counters.
pub struct Metrics {
    registry: Registry,
    decisions: Family<OutcomeLabel, Counter>,
    audit_would_deny: Family<PolicyLabel, Counter>,
    crl_publish_failures: Family<ReasonLabel, Counter>,
    revocations_deferred: Family<ReasonLabel, Counter>,
    records_swept: Family<ReasonLabel, Counter>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    crl_entries: Gauge,
    crl_bytes: Gauge,
    crl_parts: Gauge,
    crl_write_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mandate");
        let decisions = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "policy_decisions",
            "Grant issuance decisions, by outcome (Allow, Deny, RequireApproval)",
            decisions.clone(),
        );
        let audit_would_deny = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "policy_audit_would_deny",
            "Grant decisions an Audit-mode policy would have denied, by policy id",
            audit_would_deny.clone(),
        );
        let crl_publish_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "crl_publish_failures",
            "Failed attempts to sign and store the CRL, by reason (CrlUnreadable and CrlMissing stop issuance)",
            crl_publish_failures.clone(),
        );
        let revocations_deferred = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "revocations_deferred",
            "Revocations recorded while the CRL could not be signed, by reason; the CRL lists them once it can",
            revocations_deferred.clone(),
        );
        let records_swept = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "records_swept",
            "Certificates revoked from the revocation record because their grant vanished, by reason",
            records_swept.clone(),
        );
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by reason",
            reconcile_errors.clone(),
        );
        let crl_entries = Gauge::default();
        registry.register(
            "crl_entries",
            "Revoked, unexpired certificates in the last CRL this replica published",
            crl_entries.clone(),
        );
        let crl_bytes = Gauge::default();
        registry.register(
            "crl_bytes",
            "Size of the last CRL this replica published (DER)",
            crl_bytes.clone(),
        );
        let crl_parts = Gauge::default();
        registry.register(
            "crl_parts",
            "ConfigMaps the last CRL this replica published is stored in",
            crl_parts.clone(),
        );
        // 1 ms to about 33 s: a small CRL signs in a millisecond, 100,000 entries take
        // about a second to sign and store.
        let crl_write_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "crl_write_seconds",
            "Time to sign and store one CRL (successful writes)",
            crl_write_seconds.clone(),
        );
        Metrics {
            registry,
            crl_entries,
            crl_bytes,
            crl_parts,
            crl_write_seconds,
            decisions,
            audit_would_deny,
            crl_publish_failures,
            revocations_deferred,
            records_swept,
            reconcile_errors,
        }
    }
}

impl Metrics {
    pub fn decision(&self, outcome: &str) {
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn audit_would_deny(&self, policy: &str) {
        self.audit_would_deny
            .get_or_create(&PolicyLabel {
                policy: policy.to_string(),
            })
            .inc();
    }

    fn count(family: &Family<ReasonLabel, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn crl_publish_failed(&self, reason: &str) {
        Self::count(&self.crl_publish_failures, reason);
    }

    pub fn revocation_deferred(&self, reason: &str) {
        Self::count(&self.revocations_deferred, reason);
    }

    pub fn swept(&self, reason: &str) {
        Self::count(&self.records_swept, reason);
    }

    /// A CRL was written: its size and how long signing and storing it took.
    pub fn crl_published(&self, entries: usize, bytes: usize, parts: usize, took: std::time::Duration) {
        let gauge = |g: &Gauge, v: usize| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.crl_entries, entries);
        gauge(&self.crl_bytes, bytes);
        gauge(&self.crl_parts, parts);
        self.crl_write_seconds.observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, reason: &str) {
        Self::count(&self.reconcile_errors, reason);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "failed to encode metrics");
        }
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serves `/metrics` and `/healthz`, plus the routes of `extra`, until the process ends.
pub async fn serve(
    addr: SocketAddr,
    m: Arc<Metrics>,
    extra: Router,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(listen = %listener.local_addr()?, "metrics listening");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(m)
        .merge(extra);
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        m.decision("Allow");
        m.decision("Allow");
        m.audit_would_deny("audit-pol/no-writes");
        let text = m.render();
        assert!(
            text.contains("mandate_policy_decisions_total{outcome=\"Allow\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mandate_policy_audit_would_deny_total{policy=\"audit-pol/no-writes\"} 1"),
            "{text}"
        );
    }
}
