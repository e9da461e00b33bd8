//! The execd filesystem routes under `/v1/sandboxes/{id}`: info, delete, directories, list,
//! search, permissions, move, replace, upload and download. Every path is resolved by
//! `runcell_jail::SandboxFs` inside the sandbox's own filesystem view, as the sandbox's user:
//! this module only parses requests and shapes answers.
//!
//! Paths travel in their text form (`runcell_jail::encode_path`): as they are when they are
//! UTF-8, otherwise percent-encoded after the marker `/%/`, with `"path_encoding": "percent"`
//! in the `FileInfo`. Every route reads paths the same way (they all go through
//! `SandboxFs`), so a path an answer gave reaches exactly that file again.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;
use serde_json::{Map, Value};

use runcell_engine::model::rfc3339;
use runcell_jail::{
    FileMeta, FsError, FsKind, JAIL_GID, JAIL_UID, SandboxFs, decode_path, is_encoded_path,
};

use crate::error::ApiError;
use crate::sandbox_routes::{ExecdCaller, ExecdError, ExecdJson, sandbox};
use crate::sandboxes::Live;
use crate::state::AppState;

/// Entries returned by one listing or search at most.
const MAX_LISTED: usize = 10_000;
/// Entries a search looks at, at most.
const MAX_SCANNED: usize = 200_000;
/// Largest file `replace` and line reads work on.
const MAX_EDIT: u64 = 64 << 20;
/// Says that a listing or search left entries out.
const TRUNCATED: &str = "x-runcell-truncated";

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ExecdError {
    ExecdError(ApiError::new(status, code, message))
}

/// A filesystem error as an execd answer: a 4xx for everything the request or the sandbox's
/// contents explain, a 5xx only for what the server itself failed at.
pub fn fs_error(e: FsError) -> ExecdError {
    use FsError as E;
    let m = e.to_string();
    match e {
        E::NotFound { .. } => err(StatusCode::NOT_FOUND, "FILE_NOT_FOUND", m),
        E::InvalidPath { .. } => err(StatusCode::BAD_REQUEST, "INVALID_PATH", m),
        E::InvalidPattern { .. } => err(StatusCode::BAD_REQUEST, "INVALID_PATTERN", m),
        E::InvalidArgument { .. } => err(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", m),
        E::TooMany { .. } => err(StatusCode::PAYLOAD_TOO_LARGE, "TOO_MANY_ENTRIES", m),
        E::NotADirectory { .. } => err(StatusCode::BAD_REQUEST, "NOT_A_DIRECTORY", m),
        E::IsADirectory { .. } => err(StatusCode::BAD_REQUEST, "IS_A_DIRECTORY", m),
        E::NotRegular { .. } => err(StatusCode::BAD_REQUEST, "NOT_A_REGULAR_FILE", m),
        E::IsSymlink { .. } => err(StatusCode::BAD_REQUEST, "IS_A_SYMLINK", m),
        E::CrossDevice { .. } => err(StatusCode::BAD_REQUEST, "CROSS_DEVICE", m),
        E::NotEmpty { .. } => err(StatusCode::CONFLICT, "DIRECTORY_NOT_EMPTY", m),
        E::AlreadyExists { .. } => err(StatusCode::CONFLICT, "FILE_EXISTS", m),
        E::Forbidden { .. } => err(StatusCode::FORBIDDEN, "PERMISSION_DENIED", m),
        E::ReadOnly { .. } => err(StatusCode::FORBIDDEN, "READ_ONLY", m),
        E::NoSpace { .. } => err(StatusCode::PAYLOAD_TOO_LARGE, "NO_SPACE", m),
        E::TooLarge { .. } => err(StatusCode::PAYLOAD_TOO_LARGE, "FILE_TOO_LARGE", m),
        E::Io { .. } => {
            tracing::warn!("files API: {m}");
            err(StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR", m)
        }
    }
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

/// Runs a filesystem operation of the sandbox on a blocking thread.
async fn with_fs<T: Send + 'static>(
    live: &Live,
    f: impl FnOnce(&SandboxFs) -> Result<T, ExecdError> + Send + 'static,
) -> Result<T, ExecdError> {
    let jail = Arc::clone(live.sandbox.jail());
    tokio::task::spawn_blocking(move || {
        let fs = jail.filesystem().map_err(|e| {
            err(
                StatusCode::NOT_FOUND,
                "SANDBOX_NOT_FOUND",
                format!("the sandbox's filesystem is gone: {e}"),
            )
        })?;
        f(&fs)
    })
    .await
    .map_err(|e| ExecdError(ApiError::internal(e)))?
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
    responses((status = 200, body = BTreeMap<String, FileInfo>), (status = 404, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn files_info(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<BTreeMap<String, FileInfo>>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    with_fs(&live, move |fs| {
        let mut out = BTreeMap::new();
        for p in paths {
            let m = fs.stat(&p).map_err(fs_error)?;
            out.insert(p, FileInfo::of(&m));
        }
        Ok(Json(out))
    })
    .await
}

/// Deletes files (`?path=` repeated); a missing one is fine, a directory is refused.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_files(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    with_fs(&live, move |fs| {
        for p in paths {
            match fs.remove_file(&p) {
                Ok(()) | Err(FsError::NotFound { .. }) => {}
                Err(e) => return Err(fs_error(e)),
            }
        }
        Ok(StatusCode::OK)
    })
    .await
}

/// Creates directories (`mkdir -p`); the mode applies to the ones it creates.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/directories", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"/workspace/dir\": {\"mode\": 755}}`"),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn make_directories(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let items = permission_map(body)?;
    with_fs(&live, move |fs| {
        for (p, mode) in items {
            fs.mkdir_all(&p, mode.unwrap_or(0o755)).map_err(fs_error)?;
        }
        Ok(StatusCode::OK)
    })
    .await
}

/// Deletes directories with everything in them (`?path=` repeated); a missing one is fine.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/directories", tag = "files",
    params(("id" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_directories(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let paths = query_values(q.as_deref(), "path")?;
    if paths.is_empty() {
        return Err(missing("path"));
    }
    with_fs(&live, move |fs| {
        for p in paths {
            match fs.remove_all(&p) {
                Ok(()) | Err(FsError::NotFound { .. }) => {}
                Err(e) => return Err(fs_error(e)),
            }
        }
        Ok(StatusCode::OK)
    })
    .await
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
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn list_directory(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
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
    with_fs(&live, move |fs| {
        let (entries, truncated) = fs.list(&path, depth, MAX_LISTED).map_err(fs_error)?;
        Ok(listing(entries, truncated))
    })
    .await
}

/// Finds files whose name matches a glob, below a directory; at most 10,000 results.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/search", tag = "files",
    params(("id" = String, Path), ("path" = String, Query), ("pattern" = Option<String>, Query)),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn search_files(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let path = query_value(q.as_deref(), "path")?.ok_or_else(|| missing("path"))?;
    let pattern = query_value(q.as_deref(), "pattern")?
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "**".into());
    with_fs(&live, move |fs| {
        let (entries, truncated) = fs
            .search(&path, &pattern, MAX_LISTED, MAX_SCANNED)
            .map_err(fs_error)?;
        Ok(listing(entries, truncated))
    })
    .await
}

/// Changes permissions (`{path: {mode, owner?, group?}}`); ownership stays the sandbox user's.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/permissions", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"/workspace/run.sh\": {\"mode\": 755}}`"),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn set_permissions(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let items = permission_map(body)?;
    with_fs(&live, move |fs| {
        for (p, mode) in items {
            match mode {
                Some(m) => fs.chmod(&p, m).map_err(fs_error)?,
                None => {
                    fs.stat(&p).map_err(fs_error)?;
                }
            }
        }
        Ok(StatusCode::OK)
    })
    .await
}

/// Moves files (`[{src, dest}]`, in order, stopping at the first failure); `dest` must not
/// exist; its parent is created.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mv", tag = "files",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`[{\"src\": \"/workspace/a\", \"dest\": \"/workspace/b\"}]`"),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody), (status = 409, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn move_files(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
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
    with_fs(&live, move |fs| {
        for (src, dest) in moves {
            fs.stat(&src).map_err(fs_error)?;
            fs.mkdir_parent(&dest, 0o755).map_err(fs_error)?;
            fs.rename(&src, &dest).map_err(fs_error)?;
        }
        Ok(StatusCode::OK)
    })
    .await
}

/// Replaces text in files (`{path: {old, new}}`, every occurrence); `?verbose=true` answers
/// the counts.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/replace", tag = "files",
    params(("id" = String, Path), ("verbose" = Option<bool>, Query)),
    request_body(content = Object, description = "`{\"/workspace/app.py\": {\"old\": \"DEBUG = True\", \"new\": \"DEBUG = False\"}}`"),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn replace_in_files(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
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
        if old.is_empty() {
            return Err(bad("old content must not be empty"));
        }
        edits.push((path, old.to_string(), new.to_string()));
    }
    with_fs(&live, move |fs| {
        let mut counts = Map::new();
        for (path, old, new) in edits {
            let n = fs.replace(&path, &old, &new, MAX_EDIT).map_err(fs_error)?;
            counts.insert(path, serde_json::json!({"replacedCount": n}));
        }
        Ok(if verbose {
            Json(Value::Object(counts)).into_response()
        } else {
            StatusCode::OK.into_response()
        })
    })
    .await
}

/// Uploads files: multipart pairs of a `metadata` part (`{"path", "mode"?}`) and a `file`
/// part, streamed to disk; each file is capped by the sandbox's disk budget.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/upload", tag = "files",
    params(("id" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "pairs of `metadata` (JSON) and `file` parts"),
    responses((status = 200), (status = 400, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 408, description = "The body stalled or dripped", body = crate::sandbox_routes::ExecdErrorBody),
        (status = 413, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn upload_files(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let mut multipart = multipart.map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE",
            format!("the body must be multipart/form-data: {}", e.body_text()),
        )
    })?;
    let limit = live.sandbox.budget().disk_mb << 20;
    // A declared body that cannot fit in the sandbox's disk (with room for the multipart
    // framing) is refused before a byte of it is written.
    let room = limit + UPLOAD_FRAMING;
    if let Some(n) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && n > room
    {
        crate::body::drain_multipart_later(multipart);
        return Err(ExecdError(crate::body::too_large(n, room)));
    }
    let jail = Arc::clone(live.sandbox.jail());
    let mut pending: Option<(String, Option<u32>)> = None;
    let mut files = 0usize;
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| unreadable(e, "INVALID_FILE", "the multipart body is malformed"))?;
        let Some(mut field) = field else { break };
        match field.name().unwrap_or("") {
            "metadata" => {
                if pending.is_some() {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FILE",
                        "metadata and file count mismatch: a metadata part has no file part",
                    ));
                }
                let bytes = field.bytes().await.map_err(|e| {
                    unreadable(
                        e,
                        "INVALID_FILE_METADATA",
                        "reading the metadata part failed",
                    )
                })?;
                let meta: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FILE_METADATA",
                        format!("invalid metadata format: {e}"),
                    )
                })?;
                let Value::Object(meta) = meta else {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FILE_METADATA",
                        "metadata must be a JSON object with `path`",
                    ));
                };
                let path = match meta.get("path").and_then(Value::as_str) {
                    Some(p) if !p.is_empty() => p.to_string(),
                    _ => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "INVALID_FILE_METADATA",
                            "metadata path is empty",
                        ));
                    }
                };
                check_owner(&meta)?;
                let mode = parse_mode(meta.get("mode").unwrap_or(&Value::Null))?;
                pending = Some((path, mode));
            }
            "file" => {
                let Some((path, mode)) = pending.take() else {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FILE_METADATA",
                        "metadata file is missing: each file part must follow its metadata part",
                    ));
                };
                let j = Arc::clone(&jail);
                let p = path.clone();
                let mut upload = tokio::task::spawn_blocking(move || {
                    j.filesystem()
                        .map_err(|e| FsError::Io {
                            path: p.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })
                        .and_then(|fs| fs.upload(&p, limit))
                })
                .await
                .map_err(|e| ExecdError(ApiError::internal(e)))?
                .map_err(fs_error)?;
                while let Some(chunk) = field.chunk().await.map_err(|e| {
                    unreadable(e, "INVALID_FILE_CONTENT", "reading the file part failed")
                })? {
                    upload.write(&chunk).map_err(fs_error)?;
                }
                tokio::task::spawn_blocking(move || upload.commit(mode))
                    .await
                    .map_err(|e| ExecdError(ApiError::internal(e)))?
                    .map_err(fs_error)?;
                files += 1;
            }
            other => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FILE",
                    format!("unexpected part {other:?}: parts are `metadata` and `file`"),
                ));
            }
        }
    }
    if pending.is_some() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE_CONTENT",
            "file is missing: the last metadata part has no file part",
        ));
    }
    if files == 0 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE",
            "multipart form is empty",
        ));
    }
    Ok(StatusCode::OK)
}

/// Room for multipart boundaries and part headers beyond the files themselves, bytes.
const UPLOAD_FRAMING: u64 = 1 << 20;

/// A multipart body that could not be read: 408 if it stalled or dripped (the upload's
/// temporary file is removed as the upload is dropped), else 400 with `code`.
fn unreadable(
    e: axum::extract::multipart::MultipartError,
    code: &'static str,
    what: &str,
) -> ExecdError {
    if let Some(t) = crate::body::BodyTimeout::find(&e) {
        return ExecdError(t.api_error());
    }
    err(StatusCode::BAD_REQUEST, code, format!("{what}: {e}"))
}

/// A parsed `Range: bytes=…` (the first range only).
#[derive(Debug, PartialEq)]
enum Range {
    Full,
    Part(u64, u64),
    Unsatisfiable,
    Invalid,
}

fn parse_range(h: Option<&str>, size: u64) -> Range {
    let Some(h) = h else { return Range::Full };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Range::Invalid;
    };
    let first = spec.split(',').next().unwrap_or("").trim();
    let Some((a, b)) = first.split_once('-') else {
        return Range::Invalid;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Range::Invalid,
        (true, false) => match num(b) {
            None => Range::Invalid,
            Some(0) => Range::Unsatisfiable,
            Some(n) if size == 0 => {
                let _ = n;
                Range::Unsatisfiable
            }
            Some(n) => Range::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return Range::Invalid;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match num(b) {
                    Some(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return Range::Invalid,
                }
            };
            if start >= size {
                Range::Unsatisfiable
            } else {
                Range::Part(start, end)
            }
        }
    }
}

/// `Content-Disposition` for a file at `path` (text form); a name that is not UTF-8 is given
/// lossily (it is only a suggestion for the client's own file name).
fn disposition(path: &str) -> String {
    let raw = decode_path(path).unwrap_or(std::borrow::Cow::Borrowed(path.as_bytes()));
    let base = raw.rsplit(|b| *b == b'/').next().unwrap_or(b"download");
    let name = String::from_utf8_lossy(base);
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Downloads a file: whole, a byte range (`Range`, 206), or lines (`offset`, `limit`).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/download", tag = "files",
    params(("id" = String, Path), ("path" = String, Query), ("offset" = Option<u64>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, description = "The file"), (status = 206, description = "A byte range"),
        (status = 404, body = crate::sandbox_routes::ExecdErrorBody),
        (status = 416, body = crate::sandbox_routes::ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn download_file(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let path = query_value(q.as_deref(), "path")?.ok_or_else(|| missing("path"))?;
    let line = |name: &str| -> Result<Option<u64>, ExecdError> {
        match query_value(q.as_deref(), name)? {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| bad(format!("{name} must be a whole number of at least 1"))),
        }
    };
    let (offset, limit) = (line("offset")?, line("limit")?);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if (offset.is_some() || limit.is_some()) && range.is_some() {
        return Err(bad("offset/limit and Range cannot be used together"));
    }
    let p = path.clone();
    let (file, meta) = with_fs(&live, move |fs| fs.open_read(&p).map_err(fs_error)).await?;
    if offset.is_some() || limit.is_some() {
        let (Some(offset), Some(limit)) = (offset, limit) else {
            return Err(bad(
                "both offset and limit must be provided together for line-based reading",
            ));
        };
        let text = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            file.take(MAX_EDIT).read_to_end(&mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| ExecdError(ApiError::internal(e)))?
        .map_err(|e| {
            fs_error(FsError::Io {
                path: path.clone(),
                source: e,
            })
        })?;
        let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        let from = (offset - 1).min(lines.len() as u64) as usize;
        let to = (from as u64 + limit).min(lines.len() as u64) as usize;
        let body: Vec<u8> = lines[from..to].concat();
        let mut r = Response::new(Body::from(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(r);
    }
    let size = meta.size;
    let (status, start, len) = match parse_range(range.as_deref(), size) {
        Range::Full => (StatusCode::OK, 0, size),
        Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Range::Invalid => {
            return Err(err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_NOT_SATISFIABLE",
                format!("invalid Range header {:?}", range.unwrap_or_default()),
            ));
        }
        Range::Unsatisfiable => {
            let mut e = err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_NOT_SATISFIABLE",
                format!("the range is outside the file ({size} bytes)"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(e);
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| {
                fs_error(FsError::Io {
                    path: path.clone(),
                    source: e,
                })
            })?;
    }
    let body = Body::from_stream(stream::unfold((file, len), |(mut f, left)| async move {
        use tokio::io::AsyncReadExt;
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (64 << 10).min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    }));
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition(&meta.path)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Range::Part(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Range::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Range::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Range::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Range::Part(0, 1));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Range::Invalid);
        assert_eq!(parse_range(Some("items=0-1"), 10), Range::Invalid);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Range::Invalid);
        assert_eq!(parse_range(Some("bytes=-"), 10), Range::Invalid);
    }

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
        assert_eq!(
            disposition("/%/workspace/caf%E9.txt"),
            "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%EF%BF%BD.txt"
        );
    }

    #[test]
    fn owners_are_the_sandbox_user_only() {
        let ok: Map<String, Value> =
            serde_json::from_str(r#"{"owner": "runner", "group": "", "mode": 644}"#).unwrap();
        assert!(check_owner(&ok).is_ok());
        let bad_owner: Map<String, Value> = serde_json::from_str(r#"{"owner": "root"}"#).unwrap();
        assert!(check_owner(&bad_owner).is_err());
        assert!(disposition("/workspace/a b/ü.txt").contains("filename*=UTF-8''%C3%BC.txt"));
    }
}
