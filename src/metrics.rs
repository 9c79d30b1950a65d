//! Prometheus metrics and health endpoints, served over plain HTTP on `--metrics-listen`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
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
        Metrics {
            registry,
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

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(listen = %listener.local_addr()?, "metrics listening");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(m);
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
