//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{api, error, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runcell",
        description = "Runs untrusted code safely and fast: one-shot executions (sync, async, \
                       batch, streaming, webhooks). Authenticate with `X-API-Key: <key>` or \
                       `Authorization: Bearer <key>`; errors are `{\"detail\", \"code\"}`."
    ),
    paths(
        routes::execute,
        routes::execute_async,
        routes::execute_batch,
        routes::get_execution,
        routes::list_executions,
        routes::cancel_execution,
        routes::submit,
        routes::result,
        routes::deliveries,
        routes::webhook_secret,
        routes::languages,
        routes::health,
        routes::metrics,
    ),
    components(schemas(
        runcell_engine::ExecuteRequest,
        runcell_engine::LimitsRequest,
        runcell_engine::FileSpec,
        runcell_engine::ExecutionResult,
        runcell_engine::CompileResult,
        api::ExecutionObject,
        api::ExecutionList,
        api::LanguageInfo,
        api::WebhookSecret,
        api::DeliveryList,
        api::DeliveryInfo,
        api::AttemptInfo,
        api::Health,
        error::ErrorBody,
    )),
    modifiers(&Security),
    tags(
        (name = "executions", description = "One-shot runs"),
        (name = "webhooks", description = "Standard Webhooks deliveries"),
        (name = "compatibility", description = "The submit/result names of the sync-async-webhooks guide"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
