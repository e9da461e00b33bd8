//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{api, error, files_routes, routes, sandbox_routes, sandboxes};

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
        sandbox_routes::create_sandbox,
        sandbox_routes::list_sandboxes,
        sandbox_routes::get_sandbox,
        sandbox_routes::delete_sandbox,
        sandbox_routes::renew_sandbox,
        sandbox_routes::create_run,
        sandbox_routes::list_runs,
        sandbox_routes::get_run,
        sandbox_routes::cancel_run,
        sandbox_routes::list_artifacts,
        sandbox_routes::download_artifact,
        sandbox_routes::preview_artifact,
        sandbox_routes::ping,
        sandbox_routes::create_context,
        sandbox_routes::list_contexts,
        sandbox_routes::delete_contexts,
        sandbox_routes::get_context,
        sandbox_routes::delete_context,
        sandbox_routes::run_code,
        sandbox_routes::interrupt_code,
        sandbox_routes::run_command,
        sandbox_routes::interrupt_command,
        sandbox_routes::command_status,
        sandbox_routes::command_logs,
        sandbox_routes::create_session,
        sandbox_routes::run_in_session,
        sandbox_routes::delete_session,
        sandbox_routes::sandbox_metrics,
        sandbox_routes::watch_metrics,
        files_routes::files_info,
        files_routes::delete_files,
        files_routes::make_directories,
        files_routes::delete_directories,
        files_routes::list_directory,
        files_routes::search_files,
        files_routes::set_permissions,
        files_routes::move_files,
        files_routes::replace_in_files,
        files_routes::upload_files,
        files_routes::download_file,
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
        sandboxes::CreateSandbox,
        sandboxes::LimitsRequest,
        sandboxes::SandboxObject,
        sandboxes::SandboxList,
        crate::config::SandboxLimits,
        sandbox_routes::RenewRequest,
        sandbox_routes::CodeRunRequest,
        sandbox_routes::RunList,
        sandbox_routes::ArtifactList,
        sandbox_routes::CodeContextObject,
        sandbox_routes::ExecdErrorBody,
        sandbox_routes::CommandStatusObject,
        sandbox_routes::SessionObject,
        runcell_sandbox::Metrics,
        files_routes::FileInfo,
        runcell_sandbox::model::CodeRun,
        runcell_sandbox::model::RunStatus,
        runcell_sandbox::model::Execution,
        runcell_sandbox::model::ResultItem,
        runcell_sandbox::model::Artifact,
        runcell_sandbox::model::Logs,
        runcell_sandbox::model::RunError,
    )),
    modifiers(&Security),
    tags(
        (name = "executions", description = "One-shot runs"),
        (name = "webhooks", description = "Standard Webhooks deliveries"),
        (name = "compatibility", description = "The submit/result names of the sync-async-webhooks guide"),
        (name = "operations", description = "Health and metrics"),
        (name = "sandboxes", description = "Long-lived sandboxes"),
        (name = "code runs", description = "Code runs in a sandbox's contexts, and their artifacts"),
        (name = "execd", description = "OpenSandbox execd routes under /v1/sandboxes/{id}"),
        (name = "files", description = "A sandbox's filesystem, as its own user sees it (execd routes)"),
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
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-EXECD-ACCESS-TOKEN"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
