//! Moving file contents: multipart uploads streamed into the sandbox (capped by its disk
//! budget, refused early by declared length) and downloads (whole, a byte range, or lines).

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;

use runcell_service::model::decode_path;
use runcell_service::sandboxes::read_lines;

use super::{bad, check_owner, err, missing, parse_mode, query_value};
use crate::AppState;
use crate::body::SharedBody;
use crate::execd::{ExecdCaller, ExecdError, ExecdErrorBody};

/// Uploads files: multipart pairs of a `metadata` part (`{"path", "mode"?}`) and a `file`
/// part, streamed to disk; each file is capped by the sandbox's disk budget.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/upload", tag = "files",
    params(("id" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "pairs of `metadata` (JSON) and `file` parts"),
    responses((status = 200), (status = 400, body = ExecdErrorBody),
        (status = 408, description = "The body stalled or dripped", body = ExecdErrorBody),
        (status = 413, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
///
/// Every refusal (credentials, sandbox, a bad part, a full disk) reads and discards the rest
/// of the body while it is answered ([`crate::body::drain_later`]): the SDKs write their whole
/// chunked body before they read the answer, and would otherwise see a reset connection
/// instead of the error. A successful upload reads the body to its end before it answers
/// (the parser stops at the closing boundary, and the SDK sends its last, empty chunk after
/// it), so that the connection stays open for the SDK's next request.
pub async fn upload_files(
    State(state): State<AppState>,
    caller: Result<ExecdCaller, ExecdError>,
    Path(id): Path<String>,
    req: Request,
) -> Result<StatusCode, ExecdError> {
    let (parts, body) = req.into_parts();
    let cred = match caller {
        Ok(ExecdCaller(cred)) => cred,
        Err(e) => {
            crate::body::drain_later(body);
            return Err(e);
        }
    };
    let headers = parts.headers.clone();
    let body = SharedBody::new(body);
    let mut multipart =
        match Multipart::from_request(Request::from_parts(parts, body.body()), &()).await {
            Ok(m) => m,
            Err(e) => {
                crate::body::drain_later(body.body());
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FILE",
                    format!("the body must be multipart/form-data: {}", e.body_text()),
                ));
            }
        };
    let result = upload_parts(&state, &cred, &id, &headers, &mut multipart).await;
    drop(multipart);
    if result.is_ok() {
        crate::body::discard(body.body()).await;
    } else {
        crate::body::drain_later(body.body());
    }
    result
}

/// The upload itself, reading `multipart` until its end or the first error.
async fn upload_parts(
    state: &AppState,
    cred: &runcell_service::sandboxes::Cred,
    id: &str,
    headers: &axum::http::HeaderMap,
    multipart: &mut Multipart,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(cred, id).await?;
    let limit = state.svc.upload_limit(&live);
    // A declared body that cannot fit in the sandbox's disk (with room for the multipart
    // framing) is refused before a byte of it is written.
    let room = limit + UPLOAD_FRAMING;
    if let Some(n) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && n > room
    {
        return Err(ExecdError(crate::body::too_large(n, room)));
    }
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
                let mut upload = state.svc.begin_upload(&live, path).await?;
                while let Some(chunk) = field.chunk().await.map_err(|e| {
                    unreadable(e, "INVALID_FILE_CONTENT", "reading the file part failed")
                })? {
                    upload.write(&chunk)?;
                }
                upload.commit(mode).await?;
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
        (status = 404, body = ExecdErrorBody),
        (status = 416, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn download_file(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
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
    let (file, meta) = state.svc.open_file(&live, p).await?;
    if offset.is_some() || limit.is_some() {
        let (Some(offset), Some(limit)) = (offset, limit) else {
            return Err(bad(
                "both offset and limit must be provided together for line-based reading",
            ));
        };
        let body = read_lines(file, &path, offset, limit).await?;
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
                ExecdError::from(runcell_service::Error::new(
                    runcell_service::Kind::Internal,
                    "RUNTIME_ERROR",
                    format!("{path}: {e}"),
                ))
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
    fn dispositions_name_the_file() {
        assert_eq!(
            disposition("/%/workspace/caf%E9.txt"),
            "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%EF%BF%BD.txt"
        );
        assert!(disposition("/workspace/a b/ü.txt").contains("filename*=UTF-8''%C3%BC.txt"));
    }
}
