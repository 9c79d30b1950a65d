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
struct AuthzLabel {
    protocol: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LifecycleLabel {
    event: &'static str,
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
    authorizations: Family<AuthzLabel, Counter>,
    authorization_seconds: Family<ProtocolLabel, Histogram>,
    certificates: Family<LifecycleLabel, Counter>,
    revocation_seconds: Histogram,
    live_certificates: Gauge,
    soonest_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Counter::default())
    }
}

impl Metrics {
    /// The metrics, with the audit log's count of dropped events (it keeps its own).
    pub fn new(audit_dropped: Counter) -> Self {
        let mut registry = Registry::with_prefix("mandate");
        registry.register(
            "audit_events_dropped",
            "Audit events dropped from the in-memory buffer or not written to stdout",
            audit_dropped,
        );
        let authorizations = Family::<AuthzLabel, Counter>::default();
        registry.register(
            "authorizations",
            "Request-time decisions, by protocol (authorize, ext_authz_grpc, ext_authz_http), result and reason",
            authorizations.clone(),
        );
        // 10 us to about 160 ms.
        let authorization_seconds = Family::<ProtocolLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00001, 2.0, 15))
        });
        registry.register(
            "authorization_seconds",
            "Time to decide one call inside the decision service, by protocol",
            authorization_seconds.clone(),
        );
        let certificates = Family::<LifecycleLabel, Counter>::default();
        registry.register(
            "certificates",
            "Certificate lifecycle events (issued, renewed, revoked, expired), by reason",
            certificates.clone(),
        );
        // 10 ms to about 160 s.
        let revocation_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "revocation_seconds",
            "From a task's end (its finishing condition) to its certificates being revoked",
            revocation_seconds.clone(),
        );
        let live_certificates = Gauge::default();
        registry.register(
            "live_certificates",
            "Unrevoked, unexpired certificates in the revocation record",
            live_certificates.clone(),
        );
        let soonest_expiry = Gauge::default();
        registry.register(
            "certificate_soonest_expiry_timestamp_seconds",
            "notAfter (Unix seconds) of the live certificate that expires first; 0 when there is none",
            soonest_expiry.clone(),
        );
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
            authorizations,
            authorization_seconds,
            certificates,
            revocation_seconds,
            live_certificates,
            soonest_expiry,
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

    /// One request-time decision and how long it took.
    pub fn authorization(&self, protocol: &'static str, reason: &'static str, took: std::time::Duration) {
        let result = if reason == "Allowed" { "allowed" } else { "denied" };
        self.authorizations
            .get_or_create(&AuthzLabel {
                protocol,
                result,
                reason,
            })
            .inc();
        self.authorization_seconds
            .get_or_create(&ProtocolLabel { protocol })
            .observe(took.as_secs_f64());
    }

    /// A certificate lifecycle event: `issued`, `renewed`, `revoked`, `expired`.
    pub fn certificate(&self, event: &'static str, reason: &str) {
        self.certificates
            .get_or_create(&LifecycleLabel {
                event,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Seconds from a task's end to its revocation.
    pub fn revoked_after(&self, seconds: f64) {
        self.revocation_seconds.observe(seconds.max(0.0));
    }

    /// The live certificates and the soonest expiry among them.
    pub fn live(&self, count: usize, soonest: Option<i64>) {
        self.live_certificates.set(i64::try_from(count).unwrap_or(i64::MAX));
        self.soonest_expiry.set(soonest.unwrap_or(0));
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
