//! The execd filesystem routes under `/v1/sandboxes/{id}`: info, delete, directories, list,
//! search, permissions, move, replace, upload and download. Every path is resolved by
//! the service inside the sandbox's own filesystem view, as the sandbox's user: this module
//! only parses requests and shapes answers.
//!
//! Paths travel in their text form: as they are when they are
//! UTF-8, otherwise percent-encoded after the marker `/%/`, with `"path_encoding": "percent"`
//! in the `FileInfo`. Every route reads paths the same way (they all go through the
//! service's files), so a path an answer gave reaches exactly that file again.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use runcell_service::model::{FileMeta, FsKind, JAIL_GID, JAIL_UID, is_encoded_path, rfc3339};

pub mod transfer;

use crate::AppState;
use crate::error::ApiError;
use crate::execd::{ExecdCaller, ExecdError, ExecdErrorBody, ExecdJson};
/// Says that a listing or search left entries out.
const TRUNCATED: &str = "x-runcell-truncated";

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ExecdError {
    ExecdError(ApiError::new(status, code, message))
}

fn bad(message: impl Into<String>) -> ExecdError {
    err(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", message)
}

fn missing(name: &str) -> ExecdError {
    err(
        StatusCode::BAD_REQUEST,
        "MISSING_QUERY",
        format!("missing query parameter '{name}'"),
    )
}

/// execd's `FileInfo`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// The absolute path, as it is if it is UTF-8; otherwise percent-encoded after the marker
    /// `/%/` (see `path_encoding`). Either form can be sent back to name this file.
    pub path: String,
    /// `"percent"` when `path` is encoded (the file's path is not UTF-8, or starts with
    /// `/%/`): `/%/` followed by the path without its first `/`, where `%XX` stands for the
    /// byte `XX`. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_encoding: Option<&'static str>,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    pub modified_at: String,
    pub created_at: String,
    pub owner: String,
    pub group: String,
    /// Permission bits as octal digits in a decimal number (`0o755` is `755`).
    pub mode: u32,
}

fn name_of(id: u32, own: u32, own_name: &str) -> String {
    match id {
        0 => "root".into(),
        65534 => "nobody".into(),
        i if i == own => own_name.into(),
        i => i.to_string(),
    }
}

fn time(ns: i128) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
}

/// `0o755` → `755`.
fn octal_digits(mode: u32) -> u32 {
    format!("{:o}", mode & 0o7777).parse().unwrap_or(0)
}

/// `755` → `0o755`; digits 8 and 9 are refused.
fn parse_mode(v: &Value) -> Result<Option<u32>, ExecdError> {
    let digits = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| bad(format!("mode must be octal digits such as 755, got {v}")))?,
        Value::String(s) => s.trim().trim_start_matches("0o").to_string(),
        _ => {
            return Err(bad(format!(
                "mode must be octal digits such as 755, got {v}"
            )));
        }
    };
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad(format!(
            "mode must be octal digits such as 755 or 0644, got {v}"
        )));
    }
    let m = u32::from_str_radix(&digits, 8).unwrap_or(0);
    Ok((m != 0).then_some(m))
}

impl FileInfo {
    pub fn of(m: &FileMeta) -> FileInfo {
        FileInfo {
            path: m.path.clone(),
            path_encoding: is_encoded_path(&m.path).then_some("percent"),
            kind: match m.kind {
                FsKind::File => "file",
                FsKind::Dir => "directory",
                FsKind::Symlink => "symlink",
                FsKind::Other => "other",
            },
            size: m.size,
            modified_at: time(m.mtime_ns),
            created_at: time(m.ctime_ns),
            owner: name_of(m.uid, JAIL_UID, "runner"),
            group: name_of(m.gid, JAIL_GID, "runner"),
            mode: octal_digits(m.mode),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding to bytes: `+` is a space, `%XX` the byte `XX`,
/// and a `%` without two hex digits stays as it is.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Every value of `name` in a raw query (`?path=a&path=b`), decoded once. A value that is not
/// UTF-8 once decoded is refused (never read lossily, which would name another file).
fn query_values(raw: Option<&str>, name: &str) -> Result<Vec<String>, ExecdError> {
    let mut out = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k) != name.as_bytes() {
            continue;
        }
        match String::from_utf8(form_decode(v)) {
            Ok(v) => out.push(v),
            Err(_) if name == "path" => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "INVALID_PATH",
                    "the query parameter `path` is not UTF-8 once percent-decoded; a file whose \
                     name is not UTF-8 is named as listings show it: \"/%/\" followed by its \
                     path with each such byte written %XX (and '%' written %25)",
                ));
            }
            Err(_) => {
                return Err(bad(format!(
                    "the query parameter `{name}` is not UTF-8 once percent-decoded"
                )));
            }
        }
    }
    Ok(out)
}

fn query_value(raw: Option<&str>, name: &str) -> Result<Option<String>, ExecdError> {
    Ok(query_values(raw, name)?.into_iter().next())
}

/// Owner and group of a `Permission`: only the sandbox's own user may be named (ownership
/// cannot be given away).
fn check_owner(p: &Map<String, Value>) -> Result<(), ExecdError> {
    for (k, own) in [("owner", JAIL_UID), ("group", JAIL_GID)] {
        match p.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() || s == "runner" || *s == own.to_string() => {}
            Some(Value::Number(n)) if n.as_u64() == Some(own as u64) => {}
            Some(v) => {
                return Err(bad(format!(
                    "{k} {v} is not this sandbox's user: files here belong to \"runner\" \
                     ({own}), and ownership cannot be given to anyone else"
                )));
            }
        }
    }
    Ok(())
}

/// `{path: Permission}` bodies.
fn permission_map(body: Value) -> Result<Vec<(String, Option<u32>)>, ExecdError> {
    let Value::Object(map) = body else {
        return Err(bad(
            "the body must be an object of path -> {owner, group, mode}",
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (path, p) in map {
        let Value::Object(p) = p else {
            return Err(bad(format!("the permission of {path} must be an object")));
        };
        check_owner(&p)?;
        out.push((path, parse_mode(p.get("mode").unwrap_or(&Value::Null))?));
    }
    Ok(out)
}

// --- routes ----------------------------------------------------------------------------------

/// Information on files (`?path=` repeated): all or nothing.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/info", tag = "files",
    params(("id" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200, body = BTreeMap<String, FileInfo>), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn files_info(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<BTreeMap<String, FileInfo>>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    let stats = state.svc.stat_files(&live, paths).await?;
    Ok(Json(
        stats
            .iter()
            .map(|(p, m)| (p.clone(), FileInfo::of(m)))
            .collect(),
    ))
}

/// Deletes files (`?path=` repeated); a missing one is fine, a directory is refused.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_files(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    state.svc.delete_files(&live, paths).await?;
    Ok(StatusCode::OK)
}

/// Creates directories (`mkdir -p`); the mode applies to the ones it creates.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/directories", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"/workspace/dir\": {\"mode\": 755}}`"),
    responses((status = 200), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn make_directories(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let items = permission_map(body)?;
    state.svc.make_directories(&live, items).await?;
    Ok(StatusCode::OK)
}

/// Deletes directories with everything in them (`?path=` repeated); a missing one is fine.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/directories", tag = "files",
    params(("id" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_directories(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    state.svc.delete_directories(&live, paths).await?;
    Ok(StatusCode::OK)
}

fn listing(entries: Vec<FileMeta>, truncated: bool) -> Response {
    let infos: Vec<FileInfo> = entries.iter().map(FileInfo::of).collect();
    let mut r = Json(infos).into_response();
    if truncated {
        r.headers_mut()
            .insert(TRUNCATED, HeaderValue::from_static("true"));
    }
    r
}

/// Lists a directory to a depth (symlinks are shown, never followed); at most 10,000 entries
/// (`X-Runcell-Truncated: true` when more were left out).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/directories/list", tag = "files",
    params(("id" = String, Path), ("path" = String, Query), ("depth" = Option<u32>, Query)),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn list_directory(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let path = query_value(q.as_deref(), "path")?.ok_or_else(|| missing("path"))?;
    let depth = match query_value(q.as_deref(), "depth")? {
        None => 1,
        Some(d) => d
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|d| *d <= 64)
            .ok_or_else(|| {
                bad(format!(
                    "depth must be a whole number from 0 to 64, got {d:?}"
                ))
            })?,
    };
    if depth == 0 {
        return Ok(Json(Vec::<FileInfo>::new()).into_response());
    }
    let (entries, truncated) = state.svc.list_directory(&live, path, depth).await?;
    Ok(listing(entries, truncated))
}

/// Finds files whose name matches a glob, below a directory; at most 10,000 results.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/search", tag = "files",
    params(("id" = String, Path), ("path" = String, Query), ("pattern" = Option<String>, Query)),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn search_files(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let path = query_value(q.as_deref(), "path")?.ok_or_else(|| missing("path"))?;
    let pattern = query_value(q.as_deref(), "pattern")?
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "**".into());
    let (entries, truncated) = state.svc.search_files(&live, path, pattern).await?;
    Ok(listing(entries, truncated))
}

/// Changes permissions (`{path: {mode, owner?, group?}}`); ownership stays the sandbox user's.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/permissions", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"/workspace/run.sh\": {\"mode\": 755}}`"),
    responses((status = 200), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn set_permissions(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let items = permission_map(body)?;
    state.svc.set_permissions(&live, items).await?;
    Ok(StatusCode::OK)
}

/// Moves files (`[{src, dest}]`, in order, stopping at the first failure); `dest` must not
/// exist; its parent is created.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mv", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`[{\"src\": \"/workspace/a\", \"dest\": \"/workspace/b\"}]`"),
    responses((status = 200), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody), (status = 409, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn move_files(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let Value::Array(items) = body else {
        return Err(bad("the body must be an array of {src, dest}"));
    };
    let mut moves = Vec::with_capacity(items.len());
    for it in items {
        let (Some(src), Some(dest)) = (
            it.get("src").and_then(Value::as_str),
            it.get("dest").and_then(Value::as_str),
        ) else {
            return Err(bad("each move needs `src` and `dest` strings"));
        };
        moves.push((src.to_string(), dest.to_string()));
    }
    state.svc.move_files(&live, moves).await?;
    Ok(StatusCode::OK)
}

/// Replaces text in files (`{path: {old, new}}`, every occurrence); `?verbose=true` answers
/// the counts.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/replace", tag = "files",
    params(("id" = String, Path), ("verbose" = Option<bool>, Query)),
    request_body(content = Object, description = "`{\"/workspace/app.py\": {\"old\": \"DEBUG = True\", \"new\": \"DEBUG = False\"}}`"),
    responses((status = 200), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn replace_in_files(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let verbose = query_value(q.as_deref(), "verbose")?.is_some_and(|v| v == "true" || v == "1");
    let Value::Object(map) = body else {
        return Err(bad("the body must be an object of path -> {old, new}"));
    };
    let mut edits = Vec::with_capacity(map.len());
    for (path, e) in map {
        let (Some(old), Some(new)) = (
            e.get("old").and_then(Value::as_str),
            e.get("new").and_then(Value::as_str),
        ) else {
            return Err(bad(format!(
                "the edit of {path} needs `old` and `new` strings"
            )));
        };
        edits.push((path, old.to_string(), new.to_string()));
    }
    let replaced = state.svc.replace_in_files(&live, edits).await?;
    Ok(if verbose {
        let counts: Map<String, Value> = replaced
            .into_iter()
            .map(|(path, n)| (path, serde_json::json!({"replacedCount": n})))
            .collect();
        Json(Value::Object(counts)).into_response()
    } else {
        StatusCode::OK.into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_digits() {
        assert_eq!(parse_mode(&serde_json::json!(755)).unwrap(), Some(0o755));
        assert_eq!(parse_mode(&serde_json::json!("0644")).unwrap(), Some(0o644));
        assert_eq!(parse_mode(&serde_json::json!(0)).unwrap(), None);
        assert_eq!(parse_mode(&Value::Null).unwrap(), None);
        assert!(parse_mode(&serde_json::json!(789)).is_err());
        assert!(parse_mode(&serde_json::json!(-1)).is_err());
        assert!(parse_mode(&serde_json::json!("rwx")).is_err());
        assert!(parse_mode(&serde_json::json!(77777)).is_err());
        assert_eq!(octal_digits(0o755), 755);
        assert_eq!(octal_digits(0o4755), 4755);
    }

    #[test]
    fn queries_repeat_and_decode_once() {
        let q = Some("path=%2Fworkspace%2Fa&path=b%252e&x=1&p%61th=a+b%&&=&path");
        assert_eq!(
            query_values(q, "path").unwrap(),
            vec!["/workspace/a", "b%2e", "a b%", ""]
        );
        assert_eq!(query_value(q, "x").unwrap().as_deref(), Some("1"));
        assert!(query_values(None, "path").unwrap().is_empty());
        // The marker form passes through as text; raw bytes that are not UTF-8 are refused.
        let q = Some("path=%2F%25%2Fworkspace%2Fcaf%25E9&pattern=%FF");
        assert_eq!(
            query_values(q, "path").unwrap(),
            vec!["/%/workspace/caf%E9"]
        );
        assert!(query_values(Some("path=%2Fworkspace%2Fcaf%E9"), "path").is_err());
        assert!(query_values(q, "pattern").is_err());
    }

    #[test]
    fn file_infos_flag_encoded_paths() {
        let meta = |path: &str| FileMeta {
            path: path.into(),
            kind: FsKind::File,
            size: 1,
            mode: 0o644,
            uid: JAIL_UID,
            gid: JAIL_GID,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        let plain = serde_json::to_value(FileInfo::of(&meta("/workspace/50%.txt"))).unwrap();
        assert!(plain.get("path_encoding").is_none(), "{plain}");
        let enc = serde_json::to_value(FileInfo::of(&meta("/%/workspace/caf%E9"))).unwrap();
        assert_eq!(enc["path_encoding"], "percent");
        assert_eq!(enc["path"], "/%/workspace/caf%E9");
    }

    #[test]
    fn owners_are_the_sandbox_user_only() {
        let ok: Map<String, Value> =
            serde_json::from_str(r#"{"owner": "runner", "group": "", "mode": 644}"#).unwrap();
        assert!(check_owner(&ok).is_ok());
        let bad_owner: Map<String, Value> = serde_json::from_str(r#"{"owner": "root"}"#).unwrap();
        assert!(check_owner(&bad_owner).is_err());
    }
}
