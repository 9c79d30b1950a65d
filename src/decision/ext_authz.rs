//! Envoy's external authorization, both protocols: the gRPC
//! `envoy.service.auth.v3.Authorization/Check` service and the HTTP service
//! (`/v1/ext-authz/...`). Each request becomes one [`Call`] for one subject and is
//! decided by the same [`Service`] as `POST /v1/authorize`.
//!
//! What the call is (docs/authorize.md):
//! - **the subject**: the peer certificate Envoy verified and forwards
//!   (`include_peer_certificate` on gRPC; a `x-mandate-peer-certificate:
//!   %DOWNSTREAM_PEER_CERT%` header Envoy adds on HTTP, which overrides any client
//!   header of that name). Client-sent identity headers (`x-forwarded-client-cert`,
//!   `x-spiffe-id`) are never read on the gRPC path; on the HTTP path only a trusted
//!   proxy's are;
//! - **tool and action**: a route's context extensions `tool` / `action` (gRPC), else
//!   an MCP `tools/call` (the MCP filter's metadata, else the `Mcp-Method`/`Mcp-Name`
//!   headers, else the JSON-RPC body when Envoy sends it): tool = the MCP tool name,
//!   action `call`; else the first path segment and the lower-cased method;
//! - **destination**: host and path, without the query;
//! - **data sensitivity**: the higher of the route's `dataSensitivity` extension and a
//!   client's `x-mandate-data-sensitivity` header (a client can raise it, never lower
//!   it below the route's); `internal` when neither says.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use envoy_types::{
    ext_authz::v3::{
        CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{Authorization, CheckRequest, CheckResponse, HttpStatusCode},
    },
    pb::google::protobuf::{Struct, Value as PbValue, value::Kind},
};
use serde_json::{Map, Value};

use super::{
    api::{Api, AuthorizeResponse, MAX_ARGUMENTS_BYTES, Peer, arguments},
    service::{Answer, Named},
};
use crate::{api::Sensitivity, decide::authorize::Call};

/// The MCP filter's namespace in Envoy's dynamic metadata.
pub const MCP_METADATA: &str = "envoy.filters.http.mcp";
/// Header names.
pub const PEER_CERTIFICATE_HEADER: &str = "x-mandate-peer-certificate";
pub const SPIFFE_ID_HEADER: &str = "x-mandate-spiffe-id";
pub const SERIAL_HEADER: &str = "x-mandate-serial";
pub const DECISION_HEADER: &str = "x-mandate-decision-id";
pub const GRANT_HEADER: &str = "x-mandate-grant";
pub const REASON_HEADER: &str = "x-mandate-reason";
pub const SENSITIVITY_HEADER: &str = "x-mandate-data-sensitivity";
pub const INTENT_HEADER: &str = "x-mandate-intent";
/// Identity headers other proxies use; trusted only from a trusted proxy.
const FOREIGN_IDENTITY_HEADERS: [&str; 2] = ["x-forwarded-client-cert", "x-spiffe-id"];

/// The attributes of a request, whichever protocol carried them.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The original path, with its query.
    pub path: &'a str,
    pub headers: &'a HashMap<String, String>,
    pub context: Option<&'a HashMap<String, String>>,
    /// The MCP filter's metadata, when present.
    pub mcp: Option<Value>,
    pub body: &'a str,
}

fn sensitivity(s: &str) -> Option<Sensitivity> {
    serde_json::from_value(Value::String(s.trim().to_ascii_lowercase())).ok()
}

/// The call `attrs` describe, or why they do not describe one.
pub fn call_of(attrs: &Attributes<'_>) -> Result<Call, String> {
    let header = |name: &str| attrs.headers.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let ext = |name: &str| {
        attrs
            .context
            .and_then(|c| c.get(name))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let path = attrs.path.split(['?', '#']).next().unwrap_or_default();
    let host = attrs.host.to_ascii_lowercase();
    let destination = format!("{host}{path}");

    // An MCP tools/call: from the MCP filter, the MCP headers, or the body.
    let mut mcp_tool: Option<String> = None;
    let mut mcp_arguments: Option<Value> = None;
    if let Some(meta) = &attrs.mcp
        && meta.get("method").and_then(Value::as_str) == Some("tools/call")
    {
        let params = meta.get("params");
        mcp_tool = params
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        mcp_arguments = params.and_then(|p| p.get("arguments")).cloned();
    }
    if mcp_tool.is_none()
        && !attrs.body.is_empty()
        && let Ok(rpc) = serde_json::from_str::<Value>(attrs.body)
        && rpc.get("method").and_then(Value::as_str) == Some("tools/call")
    {
        let params = rpc.get("params");
        mcp_tool = params
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        mcp_arguments = params.and_then(|p| p.get("arguments")).cloned();
    }
    if mcp_tool.is_none() && header("mcp-method") == Some("tools/call") {
        mcp_tool = header("mcp-name").map(str::to_string);
    }
    // The body and the headers must agree (MCP 2026-07-28 requires servers to check;
    // a gateway deciding on the header alone would be fooled by one that does not).
    if let (Some(tool), Some(name)) = (&mcp_tool, header("mcp-name"))
        && header("mcp-method") == Some("tools/call")
        && tool != name
    {
        return Err(format!(
            "the Mcp-Name header {name:?} differs from the tools/call body's tool {tool:?}"
        ));
    }

    let first_segment = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let tool = ext("tool")
        .map(str::to_string)
        .or(mcp_tool.clone())
        .or_else(|| header("x-mandate-tool").map(str::to_string))
        .unwrap_or_else(|| first_segment.to_string());
    let action = ext("action")
        .map(str::to_string)
        .or_else(|| mcp_tool.as_ref().map(|_| "call".to_string()))
        .or_else(|| header("x-mandate-action").map(str::to_string))
        .unwrap_or_else(|| attrs.method.to_ascii_lowercase());
    if tool.is_empty() {
        return Err("no tool: the route names none, the request is no MCP tools/call, and the path is /".to_string());
    }
    let route_level = match ext("dataSensitivity") {
        Some(s) => Some(sensitivity(s).ok_or_else(|| format!("the route's dataSensitivity {s:?} is not a level"))?),
        None => None,
    };
    let client_level = match header(SENSITIVITY_HEADER) {
        Some(s) => Some(sensitivity(s).ok_or_else(|| format!("{SENSITIVITY_HEADER} {s:?} is not a level"))?),
        None => None,
    };
    let data_sensitivity = route_level.max(client_level).unwrap_or_default();
    if let Some(a) = &mcp_arguments
        && serde_json::to_vec(a).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_ARGUMENTS_BYTES
    {
        return Err(format!("the tool call's arguments exceed {MAX_ARGUMENTS_BYTES} bytes"));
    }
    Ok(Call {
        tool,
        action,
        destination,
        data_sensitivity,
        intent: ext("intent").or(header(INTENT_HEADER)).unwrap_or_default().to_string(),
        arguments: arguments(mcp_arguments)?,
        traceparent: header("traceparent").unwrap_or_default().to_string(),
        request_id: header("x-request-id").unwrap_or_default().to_string(),
    })
}

/// A protobuf `Value` as JSON.
pub fn json_of(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_of).collect()),
    }
}

fn struct_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_of(v)))
            .collect::<Map<_, _>>(),
    )
}

fn string_value(s: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The keys Envoy's access log can print with
/// `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decisionId)%`.
fn dynamic_metadata(answer: &Answer) -> Struct {
    let n = &answer.verdict.named;
    let mut fields = HashMap::from([
        ("decisionId".to_string(), string_value(&answer.decision_id)),
        ("reason".to_string(), string_value(answer.verdict.reason.as_str())),
    ]);
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            fields.insert(k.to_string(), string_value(v));
        }
    };
    put("serial", &answer.serial);
    if !n.grant_uid.is_empty() {
        put("grant", &format!("{}/{}", n.grant_namespace, n.grant_name));
        put("grantUid", &n.grant_uid);
        put("grantGeneration", &n.grant_generation.to_string());
    }
    put("identity", &n.identity);
    put("taskUid", &n.task_uid);
    Struct { fields }
}

fn deny_body(answer: &Answer) -> String {
    serde_json::to_string(&AuthorizeResponse::of(answer)).unwrap_or_default()
}

/// The gRPC service.
pub struct ExtAuthzGrpc(pub Arc<Api>);

#[tonic::async_trait]
impl Authorization for ExtAuthzGrpc {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        let peer = request.extensions().get::<Peer>().cloned().unwrap_or_default();
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(caller) = self.0.caller(&peer, authorization.as_deref()).await else {
            self.0
                .service
                .metrics
                .authorization("ext_authz_grpc", "Unauthenticated", started.elapsed());
            return Err(tonic::Status::unauthenticated(
                "authenticate to call Mandate's decision service",
            ));
        };
        let check = request.into_inner();
        let empty = HashMap::new();
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let raw_headers: HashMap<String, String>;
        let headers = match check.get_client_headers() {
            Some(h) if !h.is_empty() => h,
            _ => {
                raw_headers = http
                    .and_then(|h| h.header_map.as_ref())
                    .map(|m| {
                        m.headers
                            .iter()
                            .map(|h| {
                                let v = if h.value.is_empty() {
                                    String::from_utf8_lossy(&h.raw_value).into_owned()
                                } else {
                                    h.value.clone()
                                };
                                (h.key.to_ascii_lowercase(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                &raw_headers
            }
        };
        let mcp = attributes
            .and_then(|a| a.metadata_context.as_ref())
            .and_then(|m| m.filter_metadata.get(MCP_METADATA))
            .map(struct_json);
        let attrs = Attributes {
            method: http.map_or("", |h| h.method.as_str()),
            host: http.map_or("", |h| h.host.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            headers,
            context: Some(attributes.map_or(&empty, |a| &a.context_extensions)),
            mcp,
            body: http.map_or("", |h| h.body.as_str()),
        };
        let certificate = attributes
            .and_then(|a| a.source.as_ref())
            .map(|s| s.certificate.clone())
            .filter(|c| !c.is_empty());
        let named = Named {
            certificate,
            asserted: None,
            identity_claimed: false,
        };
        let answer = match call_of(&attrs) {
            Ok(call) => self.0.service.authorize(&caller, &named, &call, "ext_authz_grpc"),
            Err(message) => self.0.service.invalid(&caller, message, "ext_authz_grpc"),
        };
        Ok(tonic::Response::new(check_response(&answer)))
    }
}

fn check_response(answer: &Answer) -> CheckResponse {
    let mut response = CheckResponse::new();
    response.set_dynamic_metadata(Some(dynamic_metadata(answer)));
    let n = &answer.verdict.named;
    if answer.verdict.allowed() {
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header(DECISION_HEADER, answer.decision_id.clone(), None, false);
        ok.add_header(
            GRANT_HEADER,
            format!("{}/{}", n.grant_namespace, n.grant_name),
            None,
            false,
        );
        ok.add_header(SERIAL_HEADER, answer.serial.clone(), None, false);
        // Identity headers a client sent must not reach the upstream looking like ours.
        for h in [PEER_CERTIFICATE_HEADER, SPIFFE_ID_HEADER] {
            ok.remove_header(h);
        }
        response.set_status(tonic::Status::ok("")).set_http_response(ok);
    } else {
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(HttpStatusCode::Forbidden)
            .add_header(REASON_HEADER, answer.verdict.reason.as_str(), None, false)
            .add_header(DECISION_HEADER, answer.decision_id.clone(), None, false)
            .add_header("content-type", "application/json", None, false)
            .set_body(deny_body(answer));
        response
            .set_status(tonic::Status::permission_denied(answer.verdict.reason.as_str()))
            .set_http_response(denied);
    }
    response
}

/// The HTTP service: Envoy sends the client's method and path below `/v1/ext-authz`,
/// the headers it was told to, and (with `with_request_body`) the body. 200 allows;
/// 403 denies, with the reason in `x-mandate-reason` and a JSON body.
pub async fn http(State(api): State<Arc<Api>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let peer = request.extensions().get::<Peer>().cloned().unwrap_or_default();
    let (parts, body) = request.into_parts();
    // Envoy forwards the client's own Authorization header here, so a token only
    // authenticates Envoy when no client certificate did.
    let authorization = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
    let Some(caller) = api.caller(&peer, authorization).await else {
        api.service
            .metrics
            .authorization("ext_authz_http", "Unauthenticated", started.elapsed());
        return super::api::unauthenticated();
    };
    let body = axum::body::to_bytes(body, super::api::MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let headers = lowercase(&parts.headers);
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = original.strip_prefix("/v1/ext-authz").unwrap_or(original);
    let path = if path.is_empty() { "/" } else { path };
    // Over HTTP/2 (Envoy's usual cluster protocol) the host is the request's
    // authority, not a header.
    let host = headers
        .get("host")
        .cloned()
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let attrs = Attributes {
        method: parts.method.as_str(),
        host: &host,
        path,
        headers: &headers,
        context: None,
        mcp: None,
        body: std::str::from_utf8(&body).unwrap_or_default(),
    };
    let get = |name: &str| headers.get(name).filter(|v| !v.is_empty()).cloned();
    let certificate =
        get(PEER_CERTIFICATE_HEADER).or_else(|| get("x-forwarded-client-cert").and_then(|x| xfcc_cert(&x)));
    let asserted = match (get(SPIFFE_ID_HEADER), get(SERIAL_HEADER)) {
        (None, None) => None,
        (id, serial) => Some((id.unwrap_or_default(), serial.unwrap_or_default())),
    };
    let identity_claimed =
        certificate.is_some() || asserted.is_some() || FOREIGN_IDENTITY_HEADERS.iter().any(|h| get(h).is_some());
    let named = Named {
        certificate,
        asserted,
        identity_claimed,
    };
    let answer = match call_of(&attrs) {
        Ok(call) => api.service.authorize(&caller, &named, &call, "ext_authz_http"),
        Err(message) => api.service.invalid(&caller, message, "ext_authz_http"),
    };
    let n = &answer.verdict.named;
    let mut response = if answer.verdict.allowed() {
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        insert(h, GRANT_HEADER, &format!("{}/{}", n.grant_namespace, n.grant_name));
        insert(h, SERIAL_HEADER, &answer.serial);
        // Envoy drops these from the upstream request: a client's own copies must not
        // reach the upstream looking like Mandate's.
        insert(
            h,
            "x-envoy-auth-headers-to-remove",
            "x-mandate-peer-certificate,x-mandate-spiffe-id",
        );
        r
    } else {
        let mut r = (StatusCode::FORBIDDEN, deny_body(&answer)).into_response();
        let h = r.headers_mut();
        insert(h, REASON_HEADER, answer.verdict.reason.as_str());
        insert(h, "content-type", "application/json");
        r
    };
    insert(response.headers_mut(), DECISION_HEADER, &answer.decision_id);
    response
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn lowercase(h: &HeaderMap) -> HashMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The `Cert="..."` element of an `x-forwarded-client-cert` header (URL-encoded PEM).
fn xfcc_cert(xfcc: &str) -> Option<String> {
    xfcc.split([';', ',']).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("cert")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(headers: &'a HashMap<String, String>, ctx: Option<&'a HashMap<String, String>>) -> Attributes<'a> {
        Attributes {
            method: "POST",
            host: "MCP.Example:8443",
            path: "/mcp?x=1",
            headers,
            context: ctx,
            mcp: None,
            body: "",
        }
    }

    #[test]
    fn an_mcp_tools_call_names_the_tool_and_its_arguments() {
        let headers = HashMap::new();
        let mut a = attrs(&headers, None);
        a.mcp = Some(
            serde_json::json!({"method": "tools/call", "params": {"name": "query", "arguments": {"sql": "select 1"}}}),
        );
        let call = call_of(&a).unwrap();
        assert_eq!((call.tool.as_str(), call.action.as_str()), ("query", "call"));
        assert_eq!(call.destination, "mcp.example:8443/mcp");
        assert_eq!(call.arguments.unwrap()["sql"], "select 1");
    }

    #[test]
    fn mcp_headers_must_agree_with_the_body() {
        let headers = HashMap::from([
            ("mcp-method".to_string(), "tools/call".to_string()),
            ("mcp-name".to_string(), "read".to_string()),
        ]);
        let mut a = attrs(&headers, None);
        assert_eq!(call_of(&a).unwrap().tool, "read");
        a.body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete"}}"#;
        assert!(call_of(&a).unwrap_err().contains("differs"));
    }

    #[test]
    fn the_route_names_the_tool_and_a_client_cannot_lower_its_sensitivity() {
        let headers = HashMap::from([(SENSITIVITY_HEADER.to_string(), "public".to_string())]);
        let ctx = HashMap::from([
            ("tool".to_string(), "github".to_string()),
            ("dataSensitivity".to_string(), "confidential".to_string()),
        ]);
        let call = call_of(&attrs(&headers, Some(&ctx))).unwrap();
        assert_eq!((call.tool.as_str(), call.action.as_str()), ("github", "post"));
        assert_eq!(call.data_sensitivity, Sensitivity::Confidential);
        let headers = HashMap::from([(SENSITIVITY_HEADER.to_string(), "restricted".to_string())]);
        assert_eq!(
            call_of(&attrs(&headers, Some(&ctx))).unwrap().data_sensitivity,
            Sensitivity::Restricted
        );
    }

    #[test]
    fn without_route_or_mcp_the_path_and_method_name_the_call() {
        let headers = HashMap::new();
        let mut a = attrs(&headers, None);
        a.path = "/weather/today";
        a.method = "GET";
        let call = call_of(&a).unwrap();
        assert_eq!((call.tool.as_str(), call.action.as_str()), ("weather", "get"));
        assert_eq!(call.destination, "mcp.example:8443/weather/today");
    }

    #[test]
    fn xfcc_cert_is_read_from_its_element() {
        assert_eq!(
            xfcc_cert(r#"By=spiffe://a;Hash=abc;Cert="-----BEGIN%20CERT";URI=spiffe://b"#).as_deref(),
            Some("-----BEGIN%20CERT")
        );
        assert_eq!(xfcc_cert("By=x;URI=y"), None);
    }
}
