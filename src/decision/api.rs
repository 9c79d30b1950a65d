//! The decision service's HTTP API: `POST /v1/authorize`, the audit trail
//! (`GET`/`POST /v1/audit`) and the trust bundle (`GET /v1/trust-bundle`).
//!
//! Every route but the trust bundle and the CRL needs an authenticated caller
//! ([`super::caller`]); an unauthenticated one gets 401 and nothing else.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{
    caller::{Caller, CallerPolicy, TokenReviews},
    service::{Answer, Named, Service},
};
use crate::{
    api::Sensitivity,
    audit::{CallInfo, Event, EventKind, Filter, GrantKey, Keys},
    decide::authorize::{Call, Reason},
};

/// The arguments of one call, as JSON, at most this long: they are evaluated by
/// policy on the request path.
pub const MAX_ARGUMENTS_BYTES: usize = 16 * 1024;
/// A request body at most this long (a certificate, the call and its arguments).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A gateway's report at most this long.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Free text in a report is cut to this many characters.
const MAX_REPORT_TEXT: usize = 2048;

/// The caller a connection's client certificate makes (verified against Mandate's CA
/// in the handshake, read once per connection); `None` without a certificate or when
/// it authenticates no one.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The connection presented a client certificate.
    pub presented: bool,
    pub caller: Option<Arc<Caller>>,
}

/// What every handler shares.
pub struct Api {
    pub service: Arc<Service>,
    pub callers: CallerPolicy,
    pub tokens: TokenReviews,
}

impl Api {
    /// The caller: the connection's client certificate, else a bearer token.
    pub async fn caller(&self, peer: &Peer, authorization: Option<&str>) -> Option<Caller> {
        if peer.presented {
            return peer.caller.as_deref().cloned();
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        self.tokens.caller(&self.callers, token).await
    }
}

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/authorize", post(authorize))
        .route("/v1/audit", get(audit_query).post(audit_report))
        .route("/v1/trust-bundle", get(trust_bundle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The 401 every unauthenticated request gets: no decision, no detail.
pub fn unauthenticated() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({"reason": "Unauthenticated"})),
    )
        .into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// `POST /v1/authorize`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The agent's certificate (PEM).
    #[serde(default)]
    pub certificate: Option<String>,
    /// With `serial`, instead of `certificate`: from a trusted proxy that terminated TLS.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    pub tool: String,
    pub action: String,
    pub destination: String,
    #[serde(default)]
    pub data_sensitivity: Option<Sensitivity>,
    #[serde(default)]
    pub intent: Option<String>,
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
#[serde(rename_all = "camelCase")]
pub struct GrantRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The answer to `POST /v1/authorize`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    pub allowed: bool,
    pub reason: Reason,
    pub message: String,
    pub decision_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grant: Option<GrantRef>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<TaskRef>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial: Option<String>,
    /// Until when an allow may be cached.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub valid_until: Option<Timestamp>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub policies: Vec<String>,
}

impl AuthorizeResponse {
    pub fn of(a: &Answer) -> Self {
        let v = &a.verdict;
        let n = &v.named;
        AuthorizeResponse {
            allowed: v.allowed(),
            reason: v.reason,
            message: v.message.clone(),
            decision_id: a.decision_id.clone(),
            grant: (!n.grant_uid.is_empty()).then(|| GrantRef {
                namespace: n.grant_namespace.clone(),
                name: n.grant_name.clone(),
                uid: n.grant_uid.clone(),
                generation: n.grant_generation,
            }),
            identity: (!n.identity.is_empty()).then(|| n.identity.clone()),
            task: (!n.task_uid.is_empty()).then(|| TaskRef {
                kind: n.task_kind.clone(),
                name: n.task_name.clone(),
                uid: n.task_uid.clone(),
            }),
            serial: (!a.serial.is_empty()).then(|| a.serial.clone()),
            valid_until: v.valid_until,
            policies: v.policies.clone(),
        }
    }
}

/// Bounds and shapes a call's arguments: an object of at most
/// [`MAX_ARGUMENTS_BYTES`] of JSON, or nothing.
pub fn arguments(
    value: Option<serde_json::Value>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(map)) => {
            let size = serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_ARGUMENTS_BYTES {
                return Err(format!(
                    "the arguments are {size} bytes of JSON, above the {MAX_ARGUMENTS_BYTES}-byte limit"
                ));
            }
            Ok(Some(map))
        }
        Some(_) => Err("arguments must be a JSON object".to_string()),
    }
}

fn invalid(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"allowed": false, "reason": Reason::InvalidRequest, "message": message})),
    )
        .into_response()
}

async fn authorize(
    State(api): State<Arc<Api>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let Some(caller) = api.caller(&peer, authorization(&headers)).await else {
        api.service
            .metrics
            .authorization("authorize", "Unauthenticated", started.elapsed());
        return unauthenticated();
    };
    let req: AuthorizeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("the request is not a valid authorize request: {e}")),
    };
    let arguments = match arguments(req.arguments) {
        Ok(a) => a,
        Err(e) => return invalid(e),
    };
    let asserted = match (req.spiffe_id, req.serial) {
        (None, None) => None,
        (id, serial) => Some((id.unwrap_or_default(), serial.unwrap_or_default())),
    };
    let named = Named {
        identity_claimed: asserted.is_some(),
        certificate: req.certificate,
        asserted,
    };
    let call = Call {
        tool: req.tool,
        action: req.action,
        destination: req.destination,
        data_sensitivity: req.data_sensitivity.unwrap_or_default(),
        intent: req.intent.unwrap_or_default(),
        arguments,
        traceparent: req.traceparent.unwrap_or_default(),
        request_id: req.request_id.unwrap_or_default(),
    };
    let answer = api.service.authorize(&caller, &named, &call, "authorize");
    Json(AuthorizeResponse::of(&answer)).into_response()
}

async fn trust_bundle(State(api): State<Arc<Api>>) -> Response {
    match api.service.trust() {
        Some((_, trust)) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            trust.bundle_pem.clone(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the CA is not usable\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditQuery {
    identity: Option<String>,
    grant: Option<String>,
    task: Option<String>,
    serial: Option<String>,
    decision_id: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    events: Vec<Event>,
    /// Events dropped from the buffer since start: a timeline may be incomplete.
    dropped: u64,
}

async fn audit_query(
    State(api): State<Arc<Api>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    match api.caller(&peer, authorization(&headers)).await {
        Some(c) if c.is_proxy() => {}
        Some(_) => return (StatusCode::FORBIDDEN, "only trusted proxies read the audit trail\n").into_response(),
        None => return unauthenticated(),
    }
    let filter = Filter {
        identity: q.identity,
        grant: q.grant,
        task: q.task,
        serial: q.serial,
        decision_id: q.decision_id,
    };
    let audit = &api.service.audit;
    Json(AuditPage {
        events: audit.query(&filter, q.limit.unwrap_or(1000).min(10_000)),
        dropped: audit.dropped(),
    })
    .into_response()
}

/// What a gateway or tool reports after a call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Report {
    kind: ReportKind,
    #[serde(default)]
    decision_id: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    data_sensitivity: Option<Sensitivity>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
enum ReportKind {
    ToolCall,
    DataAccess,
}

fn cut(s: Option<String>) -> String {
    let s = s.unwrap_or_default();
    match s.char_indices().nth(MAX_REPORT_TEXT) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

async fn audit_report(
    State(api): State<Arc<Api>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match api.caller(&peer, authorization(&headers)).await {
        Some(c) if c.is_proxy() => {}
        Some(_) => return (StatusCode::FORBIDDEN, "only trusted proxies report tool calls\n").into_response(),
        None => return unauthenticated(),
    }
    if body.len() > MAX_REPORT_BYTES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a report is at most {MAX_REPORT_BYTES} bytes\n"),
        )
            .into_response();
    }
    let report: Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a valid report: {e}\n")).into_response(),
    };
    let audit = &api.service.audit;
    // The keys come from what Mandate knows, never from the report: a report names a
    // decision (or a serial) and inherits that decision's identity, grant and task.
    let keys = if let Some(id) = report.decision_id.as_deref().filter(|s| !s.is_empty()) {
        let filter = Filter {
            decision_id: Some(id.to_string()),
            ..Filter::default()
        };
        audit.query(&filter, 1).into_iter().next().map(|e| e.keys)
    } else if let Some(serial) = report.serial.as_deref().filter(|s| !s.is_empty()) {
        api.service
            .indexes
            .records
            .get(&serial.to_ascii_lowercase())
            .map(|r| Keys {
                grant: Some(GrantKey {
                    namespace: r.grant_namespace.clone(),
                    name: r.grant_name.clone(),
                    uid: r.grant_uid.clone(),
                    generation: r.generation,
                }),
                serial: Some(r.serial.clone()),
                ..Keys::default()
            })
    } else {
        return (StatusCode::BAD_REQUEST, "a report names a decisionId or a serial\n").into_response();
    };
    let Some(mut keys) = keys else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "no such decision or serial: a report must follow a decision of this replica (or name a known serial)\n",
        )
            .into_response();
    };
    if let Some(tp) = report.traceparent.filter(|t| !t.is_empty()) {
        keys.traceparent = Some(cut(Some(tp)));
    }
    audit.emit(Event {
        time: Timestamp::now(),
        kind: match report.kind {
            ReportKind::ToolCall => EventKind::ToolCall,
            ReportKind::DataAccess => EventKind::DataAccess,
        },
        keys,
        reason: report.reason.map(|r| cut(Some(r))),
        message: report.message.map(|m| cut(Some(m))),
        call: Some(CallInfo {
            tool: cut(report.tool),
            action: cut(report.action),
            destination: cut(report.destination),
            data_sensitivity: report
                .data_sensitivity
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            request_id: cut(report.request_id),
        }),
    });
    StatusCode::ACCEPTED.into_response()
}
