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
struct PolicyLabel {
    policy: String,
}

/// The operator's counters.
pub struct Metrics {
    registry: Registry,
    decisions: Family<OutcomeLabel, Counter>,
    audit_would_deny: Family<PolicyLabel, Counter>,
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
        Metrics {
            registry,
            decisions,
            audit_would_deny,
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
