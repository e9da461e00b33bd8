//! The lifecycle routes: OpenSandbox's requests and documents translated to and from the
//! service's sandboxes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use runcell_service::sandboxes::{
    CreateSandbox, Cred, LimitsRequest, SandboxObject, SandboxQuery, status_name,
};
use runcell_service::{Service, Tenant};

use super::quantity::parse_quantity;
use super::{EXECD_PORT, OsAuth};
use crate::AppState;
use crate::error::ApiError;
use crate::execd::ExecdError;
use crate::request::{host, optional_json};
use runcell_service::sandboxes::parse_rfc3339_ms;

fn bad(code: &'static str, message: impl Into<String>) -> ExecdError {
    ExecdError(ApiError::bad_request(code, message))
}

/// `status` of a sandbox document.
#[derive(Debug, Serialize)]
struct Status {
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize)]
struct Image {
    uri: String,
}

/// A sandbox as OpenSandbox shows it (`Sandbox`; `CreateSandboxResponse` without `image`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Sandbox {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<Image>,
    status: Status,
    metadata: Map<String, Value>,
    entrypoint: Vec<String>,
    expires_at: String,
    created_at: String,
}

/// OpenSandbox's state of a sandbox, from its native status: `Running`, `Paused`,
/// `Terminated`.
fn state_of(native: &str) -> String {
    let mut c = native.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => "Unknown".into(),
    }
}

/// The native status an OpenSandbox state filter names (states runcell never reports, such as
/// `Pending`, match nothing).
fn native_of(state: &str) -> String {
    state.trim().to_ascii_lowercase()
}

fn document(o: SandboxObject, with_image: bool) -> Sandbox {
    let native = status_name(&o);
    let (reason, message) = match (native.as_str(), o.end_reason.as_deref()) {
        ("terminated", Some(r)) => {
            let code = match runcell_service::sandboxes::ended_code(r) {
                "SANDBOX_DELETED" => "user_delete",
                "SANDBOX_EXPIRED" => "ttl_expiry",
                _ => "terminated",
            };
            (Some(code.to_string()), Some(r.to_string()))
        }
        ("paused", _) => (
            Some("user_pause".to_string()),
            Some(format!(
                "paused at {}: every process is frozen with its memory, and the expiry clock \
                 is stopped until it is resumed",
                o.paused_at.as_deref().unwrap_or("?")
            )),
        ),
        _ => match &o.entrypoint {
            Some(e) => {
                use runcell_service::sandboxes::EntrypointState as S;
                let words = e.argv.join(" ");
                let m = match (e.state, &e.command_id) {
                    (S::Started, Some(id)) => {
                        format!("entrypoint `{words}` runs as background command {id}")
                    }
                    (S::NotFound, _) => format!(
                        "entrypoint `{words}` is not in this sandbox's file system; recorded, \
                         not run"
                    ),
                    (S::Failed, _) => format!("entrypoint `{words}` could not be started"),
                    _ => format!("entrypoint `{words}`"),
                };
                (None, Some(m))
            }
            None => (None, None),
        },
    };
    let metadata = o
        .metadata
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(_) => (k, v),
            other => (k, Value::String(other.to_string())),
        })
        .collect();
    Sandbox {
        id: o.id,
        image: if with_image {
            o.image.map(|uri| Image { uri })
        } else {
            None
        },
        status: Status {
            state: state_of(&native),
            reason,
            message,
        },
        metadata,
        entrypoint: o.entrypoint.map(|e| e.argv).unwrap_or_default(),
        expires_at: o.expires_at,
        created_at: o.created_at,
    }
}

/// `POST /sandboxes`. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    image: Option<Value>,
    snapshot_id: Option<Value>,
    entrypoint: Option<Value>,
    /// Absent and null alike: the server's maximum lifetime.
    timeout: Option<Value>,
    resource_limits: Option<Value>,
    env: Option<Value>,
    metadata: Option<Value>,
    network_policy: Option<Value>,
    platform: Option<Value>,
    volumes: Option<Value>,
}

fn image_name(v: Option<Value>) -> Result<Option<Value>, ExecdError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Value::String(s))),
        Some(Value::Object(mut o)) => match o.remove("uri") {
            Some(Value::String(s)) => Ok(Some(Value::String(s))),
            _ => Err(bad(
                "INVALID_REQUEST",
                "image.uri must be an image name such as \"python:3.11\"",
            )),
        },
        Some(other) => Err(bad(
            "INVALID_REQUEST",
            format!("image must be an object {{\"uri\": \"<image name>\"}}, got {other}"),
        )),
    }
}

/// `resourceLimits` as native limits, checked against the server's maximum.
fn limits(svc: &Service, v: Option<Value>) -> Result<Option<LimitsRequest>, ExecdError> {
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(bad(
                "INVALID_REQUEST",
                format!(
                    "resourceLimits must be an object such as {{\"cpu\": \"500m\", \"memory\": \
                     \"512Mi\"}}, got {other}"
                ),
            ));
        }
    };
    let max = svc.config.sandboxes.max_limits;
    let mut out = LimitsRequest::default();
    for (k, v) in o {
        let text = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let q = parse_quantity(&text);
        match k.as_str() {
            "cpu" => match q {
                Some(c) if c >= 0.01 && c <= max.cpus => out.cpus = Some(json!(c)),
                _ => {
                    return Err(bad(
                        "INVALID_LIMIT",
                        format!(
                            "resourceLimits.cpu must be a CPU quantity from \"10m\" to \"{}\" \
                             (cores), got {v}",
                            max.cpus
                        ),
                    ));
                }
            },
            "memory" | "ephemeral-storage" => {
                let (name, lo, hi) = if k == "memory" {
                    ("memory_mb", 64, max.memory_mb)
                } else {
                    ("disk_mb", 1, max.disk_mb)
                };
                let mib = q.map(|b| (b / 1_048_576.0).ceil());
                match mib {
                    Some(m) if m >= lo as f64 && m <= hi as f64 => {
                        let m = json!(m as u64);
                        if name == "memory_mb" {
                            out.memory_mb = Some(m);
                        } else {
                            out.disk_mb = Some(m);
                        }
                    }
                    _ => {
                        return Err(bad(
                            "INVALID_LIMIT",
                            format!(
                                "resourceLimits.{k} must be a quantity from \"{lo}Mi\" to \
                                 \"{hi}Mi\", got {v}"
                            ),
                        ));
                    }
                }
            }
            other => {
                return Err(bad(
                    "INVALID_LIMIT",
                    format!(
                        "resourceLimits.{other} is not a resource this server has; it limits \
                         cpu, memory and ephemeral-storage"
                    ),
                ));
            }
        }
    }
    Ok(Some(out))
}

/// OpenSandbox's `networkPolicy` as runcell's `network`: `defaultAction` must be deny (or
/// absent), `allow` rules become the allow-list; `deny` rules are what deny-by-default does
/// already, unless an allowed wildcard covers them (exceptions cannot be expressed: refused).
/// Whether the API key may reach those names is the service's question (403).
fn network_of(v: Option<&Value>) -> Result<Option<Value>, ExecdError> {
    let Some(p) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let deny_default = p
        .get("defaultAction")
        .and_then(Value::as_str)
        .is_none_or(|a| a.eq_ignore_ascii_case("deny"));
    if !deny_default {
        return Err(bad(
            "INVALID_NETWORK_POLICY",
            "runcell never allows the network by default: set defaultAction \"deny\" and \
             list the hosts to allow in egress",
        ));
    }
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for r in p
        .get("egress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target = r.get("target").and_then(Value::as_str).unwrap_or("");
        match r
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
        {
            Some(a) if a == "allow" => allow.push(target.to_string()),
            Some(a) if a == "deny" => deny.push(target.to_string()),
            _ => {
                return Err(bad(
                    "INVALID_NETWORK_POLICY",
                    format!("an egress rule's action must be allow or deny: {r}"),
                ));
            }
        }
    }
    if allow.is_empty() {
        return Ok(None);
    }
    let allowed = runcell_egress::AllowList::parse(&allow, false).map_err(|e| {
        bad(
            "INVALID_NETWORK_POLICY",
            format!("networkPolicy.egress: {e}"),
        )
    })?;
    for d in &deny {
        if let Some(name) = runcell_egress::policy::canonical_name(d.trim_start_matches("*."))
            && !allowed.ports_for(&name).is_empty()
        {
            return Err(bad(
                "INVALID_NETWORK_POLICY",
                format!(
                    "deny {d:?} inside an allowed wildcard cannot be enforced; list the \
                     allowed hosts by name instead"
                ),
            ));
        }
    }
    Ok(Some(
        serde_json::json!({"egress": {"allow": allow, "default": "deny"}}),
    ))
}

fn check_platform(v: Option<&Value>) -> Result<(), ExecdError> {
    let Some(p) = v.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let os = p.get("os").and_then(Value::as_str);
    let want = p.get("arch").and_then(Value::as_str);
    if os == Some("linux") && want == Some(arch) {
        return Ok(());
    }
    Err(bad(
        "PLATFORM_NOT_AVAILABLE",
        format!("this server runs sandboxes on linux/{arch} only, not {p}"),
    ))
}

fn timeout(svc: &Service, v: Option<Value>) -> Result<Value, ExecdError> {
    let max = svc.config.sandboxes.max_timeout_secs;
    match v {
        None | Some(Value::Null) => Ok(json!(max)),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(v),
            _ => Err(bad(
                "INVALID_REQUEST",
                format!(
                    "timeout must be a whole number of seconds from 1 to {max}, or null for the \
                     longest lifetime this server allows; got {v}"
                ),
            )),
        },
    }
}

pub async fn create(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    body: Bytes,
) -> Result<Response, ExecdError> {
    let req: CreateRequest = match optional_json(&body).map_err(|mut e| {
        e.code = "INVALID_REQUEST";
        ExecdError(e)
    })? {
        None => CreateRequest::default(),
        Some(v @ Value::Object(_)) => serde_json::from_value(v)
            .map_err(|e| bad("INVALID_REQUEST", format!("invalid request: {e}")))?,
        Some(_) => {
            return Err(bad(
                "INVALID_REQUEST",
                "the request body must be a JSON object",
            ));
        }
    };
    if req.snapshot_id.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "SNAPSHOTS_NOT_SUPPORTED",
            "this server does not keep snapshots; create the sandbox from an image",
        ));
    }
    if req
        .volumes
        .as_ref()
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()) && !v.is_null())
    {
        return Err(bad(
            "VOLUMES_NOT_SUPPORTED",
            "this server does not mount volumes into sandboxes; upload files with the \
             files API instead",
        ));
    }
    let network = network_of(req.network_policy.as_ref())?;
    check_platform(req.platform.as_ref())?;
    let svc = &state.svc;
    let native = CreateSandbox {
        timeout_secs: Some(timeout(svc, req.timeout)?),
        limits: limits(svc, req.resource_limits)?,
        env: req.env,
        metadata: req.metadata,
        network,
        image: image_name(req.image)?,
        entrypoint: req.entrypoint,
    };
    let o = svc.create_sandbox(&tenant, native).await?;
    let location = format!("/opensandbox/v1/sandboxes/{}", o.id);
    let mut r = (StatusCode::ACCEPTED, Json(document(o, false))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    page: u32,
    page_size: u32,
    total_items: usize,
    total_pages: usize,
    has_next_page: bool,
}

#[derive(Debug, Serialize)]
struct SandboxList {
    items: Vec<Sandbox>,
    pagination: Pagination,
}

fn positive(name: &str, v: &str) -> Result<u32, ExecdError> {
    match v.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad(
            "INVALID_QUERY",
            format!("{name} must be a whole number of at least 1, got {v:?}"),
        )),
    }
}

/// The query of `GET /sandboxes`: `state` (repeated: any of them), `metadata` (`k=v&k2=v2`,
/// URL-encoded as a whole: all of them), `page`, `pageSize`; other parameters are ignored.
fn sandbox_query(raw: Option<&str>) -> Result<SandboxQuery, ExecdError> {
    let mut q = SandboxQuery {
        page: 1,
        page_size: 20,
        ..SandboxQuery::default()
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "state" => q
                .statuses
                .extend(v.split(',').filter(|s| !s.trim().is_empty()).map(native_of)),
            "metadata" => q.metadata.extend(
                url::form_urlencoded::parse(v.as_bytes()).map(|(k, v)| (k.into(), v.into())),
            ),
            "page" => q.page = positive("page", &v)?,
            "pageSize" => {
                q.page_size = positive("pageSize", &v)?;
                if q.page_size > 200 {
                    return Err(bad("INVALID_QUERY", "pageSize must be at most 200"));
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

pub async fn list(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ExecdError> {
    let q = sandbox_query(raw.as_deref())?;
    let page = state.svc.find_sandboxes(&tenant, &q).await?;
    let size = q.page_size as usize;
    let total_pages = page.total.div_ceil(size);
    let list = SandboxList {
        items: page.items.into_iter().map(|o| document(o, true)).collect(),
        pagination: Pagination {
            page: q.page,
            page_size: q.page_size,
            total_items: page.total,
            total_pages,
            has_next_page: (q.page as usize) < total_pages,
        },
    };
    Ok(Json(serde_json::to_value(list).map_err(|e| {
        ExecdError(runcell_service::Error::internal(e).into())
    })?))
}

async fn live(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
) -> Result<std::sync::Arc<runcell_service::sandboxes::Live>, ExecdError> {
    // The lifecycle routes act on paused sandboxes too.
    Ok(state
        .svc
        .sandbox_lifecycle(&Cred::Tenant(tenant.0.clone()), id)
        .await?)
}

pub async fn get(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
) -> Result<Response, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    Ok(Json(document(l.object(), true)).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    state.svc.delete_sandbox(&l).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn renew(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    let v = optional_json(&body)
        .map_err(|mut e| {
            e.code = "INVALID_REQUEST";
            ExecdError(e)
        })?
        .unwrap_or(Value::Null);
    let Some(text) = v.get("expiresAt").and_then(Value::as_str) else {
        return Err(bad(
            "INVALID_REQUEST",
            "the body must be {\"expiresAt\": \"<RFC 3339 time>\"}",
        ));
    };
    let Some(at) = parse_rfc3339_ms(text) else {
        return Err(bad(
            "INVALID_REQUEST",
            format!(
                "expiresAt must be an RFC 3339 time such as 2026-12-04T21:00:00Z, got {text:?}"
            ),
        ));
    };
    let at = state.svc.renew_sandbox_until(&l, at).await?;
    Ok(Json(json!({
        "expiresAt": runcell_service::sandboxes::ms_rfc3339(at)
    })))
}

pub async fn pause(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    state.svc.pause_sandbox(&l).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn resume(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    state.svc.resume_sandbox(&l).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `PATCH /sandboxes/{id}/metadata`: a JSON merge patch of the metadata; the sandbox.
pub async fn patch_metadata(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ExecdError> {
    let l = live(&state, &tenant, &id).await?;
    let patch = optional_json(&body)
        .map_err(|mut e| {
            e.code = "INVALID_REQUEST";
            ExecdError(e)
        })?
        .unwrap_or_else(|| json!({}));
    let o = state.svc.patch_sandbox_metadata(&l, &patch).await?;
    Ok(Json(document(o, true)).into_response())
}

/// `GET /sandboxes/{id}/endpoints/{port}[?use_server_proxy=true]`: where the SDK reaches a
/// port of the sandbox, without a scheme (the SDK adds its own): execd's port is the
/// sandbox's routes on this server, any other port the proxy to it. Direct mode hands out the
/// sandbox's access token (the SDK sends no API key to execd then); proxy mode sends the API
/// key with every request instead.
pub async fn endpoint(
    State(state): State<AppState>,
    OsAuth(tenant): OsAuth,
    Path((id, port)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ExecdError> {
    let port = match port.parse::<u16>() {
        Ok(p) if p >= 1 => p,
        _ => {
            return Err(bad(
                "INVALID_PORT",
                format!("port must be a whole number from 1 to 65535, got {port:?}"),
            ));
        }
    };
    let proxy = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "use_server_proxy" && v.eq_ignore_ascii_case("true"));
    let l = live(&state, &tenant, &id).await?;
    let base = state.svc.base_url(host(&headers));
    let base = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .unwrap_or(&base);
    let endpoint = if port == EXECD_PORT {
        format!("{base}/v1/sandboxes/{}", l.id())
    } else {
        format!("{base}/v1/sandboxes/{}/ports/{port}", l.id())
    };
    let headers = if proxy {
        json!({})
    } else {
        json!({"X-EXECD-ACCESS-TOKEN": state.svc.sandbox_access_token(&l)})
    };
    Ok(Json(json!({"endpoint": endpoint, "headers": headers})))
}

/// `POST /v1/metrics/events`: the SDKs' telemetry after each creation (with the API key);
/// accepted and discarded.
pub async fn metrics_event(OsAuth(_tenant): OsAuth) -> StatusCode {
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries() {
        let q = sandbox_query(Some(
            "state=Running&state=Paused&metadata=project%3DApollo%26note%3DDemo%2520Test&page=2&pageSize=5&x=1",
        ))
        .unwrap();
        assert_eq!(q.statuses, ["running", "paused"]);
        assert_eq!(
            q.metadata,
            [
                ("project".to_string(), "Apollo".to_string()),
                ("note".to_string(), "Demo Test".to_string())
            ]
        );
        assert_eq!((q.page, q.page_size), (2, 5));
        let q = sandbox_query(None).unwrap();
        assert!(q.statuses.is_empty() && q.metadata.is_empty());
        assert_eq!((q.page, q.page_size), (1, 20));
        for bad in ["page=0", "pageSize=x", "pageSize=1000"] {
            assert!(sandbox_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn states() {
        assert_eq!(state_of("running"), "Running");
        assert_eq!(state_of("paused"), "Paused");
        assert_eq!(state_of("terminated"), "Terminated");
        assert_eq!(native_of("Running"), "running");
    }

    #[test]
    fn network_policies_become_allow_lists() {
        assert_eq!(network_of(None).unwrap(), None);
        assert_eq!(
            network_of(Some(&json!({"defaultAction": "deny"}))).unwrap(),
            None
        );
        assert_eq!(
            network_of(Some(&json!({"defaultAction": "deny", "egress": [
                {"action": "deny", "target": "x.com"}]})))
            .unwrap(),
            None
        );
        assert_eq!(
            network_of(Some(&json!({"defaultAction": "deny", "egress": [
                {"action": "allow", "target": "pypi.org"},
                {"action": "allow", "target": "*.pythonhosted.org"},
                {"action": "deny", "target": "evil.com"}]})))
            .unwrap(),
            Some(
                json!({"egress": {"allow": ["pypi.org", "*.pythonhosted.org"], "default": "deny"}})
            )
        );
        for bad in [
            json!({"defaultAction": "allow"}),
            json!({"egress": [{"action": "allow", "target": "10.0.0.1"}]}),
            json!({"egress": [{"action": "maybe", "target": "a.com"}]}),
            json!({"egress": [{"action": "allow", "target": "*.a.com"},
                              {"action": "deny", "target": "b.a.com"}]}),
        ] {
            assert!(network_of(Some(&bad)).is_err(), "{bad}");
        }
    }
}
