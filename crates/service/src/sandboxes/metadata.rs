//! Changing a live sandbox's metadata with a JSON merge patch (RFC 7396: a value adds or
//! replaces its key, `null` removes it), as OpenSandbox's `PATCH /sandboxes/{id}/metadata`
//! does; the record is changed first, then what requests see.

use serde_json::{Map, Value};

use super::{Live, SandboxObject, Sandboxes, Spec};
use crate::{Error, Result, Service};

/// Keys that OpenSandbox reserves for itself.
const RESERVED_PREFIX: &str = "opensandbox.io/";
/// The largest metadata, as JSON.
const MAX_BYTES: usize = 4096;

/// `current` with `patch` applied, checked.
pub(crate) fn merged(current: &Map<String, Value>, patch: &Value) -> Result<Map<String, Value>> {
    let Some(patch) = patch.as_object() else {
        return Err(Error::invalid(
            "INVALID_REQUEST",
            "the metadata patch must be a JSON object of strings (or null to remove a key)",
        ));
    };
    let mut out = current.clone();
    for (k, v) in patch {
        if k.is_empty() || k.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid(
                "INVALID_REQUEST",
                format!("metadata key {k:?} is empty or reserved ({RESERVED_PREFIX}…)"),
            ));
        }
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::String(_) => {
                out.insert(k.clone(), v.clone());
            }
            other => {
                return Err(Error::invalid(
                    "INVALID_REQUEST",
                    format!("metadata value of {k:?} must be a string or null, got {other}"),
                ));
            }
        }
    }
    if Value::Object(out.clone()).to_string().len() > MAX_BYTES {
        return Err(Error::invalid(
            "INVALID_REQUEST",
            "metadata must be at most 4 KiB of JSON",
        ));
    }
    Ok(out)
}

impl Sandboxes {
    async fn patch_metadata(&self, live: &Live, patch: &Value) -> Result<SandboxObject> {
        // In order with other changes of the sandbox's record.
        let _ops = live.ops.lock().await;
        let current = live
            .metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let next = merged(&current, patch)?;
        let spec = Spec {
            metadata: next.clone(),
            ..live.spec.clone()
        };
        let text = serde_json::to_string(&spec).map_err(Error::internal)?;
        if !self
            .store
            .set_sandbox_spec(&live.tenant, live.id(), &text)
            .await?
        {
            live.lifetime.check(live.id(), crate::model::now_ms())?;
            return Err(super::not_found(live.id()));
        }
        *live.metadata.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(live.object())
    }
}

impl Service {
    /// Changes a live sandbox's metadata with a JSON merge patch: a string value adds or
    /// replaces its key, `null` removes it; at most 4 KiB of JSON in the end.
    pub async fn patch_sandbox_metadata(
        &self,
        live: &Live,
        patch: &Value,
    ) -> Result<SandboxObject> {
        self.sandboxes.patch_metadata(live, patch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_add_replace_and_remove() {
        let cur = json!({"team": "red", "old": "x"})
            .as_object()
            .unwrap()
            .clone();
        let next = merged(
            &cur,
            &json!({"team": "blue", "old": null, "new": "y", "gone": null}),
        )
        .unwrap();
        assert_eq!(Value::Object(next), json!({"team": "blue", "new": "y"}));
        assert_eq!(merged(&cur, &json!({})).unwrap(), cur);
        for bad in [
            json!([1]),
            json!({"n": 1}),
            json!({"opensandbox.io/x": "y"}),
            json!({"": "y"}),
            json!({"big": "x".repeat(5000)}),
        ] {
            assert_eq!(
                merged(&cur, &bad).unwrap_err().code,
                "INVALID_REQUEST",
                "{bad}"
            );
        }
    }
}
