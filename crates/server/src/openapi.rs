//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use runcell_service::{executions as svc_executions, model, sandboxes as svc_sandboxes};

use crate::{commands, error, execd, executions, files, operations, operator, runs, sandboxes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "runcell",
        description = "Runs untrusted code safely and fast: one-shot executions (sync, async, \
                       batch, streaming, webhooks), judged against test cases when they carry \
                       `test_cases`. Authenticate with `X-API-Key: <key>` or \
                       `Authorization: Bearer <key>`; errors are `{\"detail\", \"code\"}`."
    ),
    paths(
        executions::execute,
        executions::execute_async,
        executions::execute_batch,
        executions::get_execution,
        executions::list_executions,
        executions::cancel_execution,
        executions::submit,
        executions::result,
        executions::deliveries,
        executions::webhook_secret,
        operations::languages,
        operations::health,
        operations::cluster,
        operator::overview,
        operations::metrics,
        sandboxes::create_sandbox,
        sandboxes::list_sandboxes,
        sandboxes::get_sandbox,
        sandboxes::delete_sandbox,
        sandboxes::renew_sandbox,
        sandboxes::pause_sandbox,
        sandboxes::patch_metadata,
        sandboxes::resume_sandbox,
        runs::create_run,
        runs::list_runs,
        runs::get_run,
        runs::cancel_run,
        runs::list_artifacts,
        runs::download_artifact,
        runs::preview_artifact,
        execd::ping,
        execd::create_context,
        execd::list_contexts,
        execd::delete_contexts,
        execd::get_context,
        execd::delete_context,
        execd::run_code,
        execd::interrupt_code,
        commands::run_command,
        commands::interrupt_command,
        commands::command_status,
        commands::command_logs,
        commands::create_session,
        commands::run_in_session,
        commands::delete_session,
        sandboxes::sandbox_metrics,
        sandboxes::watch_metrics,
        files::files_info,
        files::delete_files,
        files::make_directories,
        files::delete_directories,
        files::list_directory,
        files::search_files,
        files::set_permissions,
        files::move_files,
        files::replace_in_files,
        files::transfer::upload_files,
        files::transfer::download_file,
    ),
    components(schemas(
        model::ExecuteRequest,
        model::LimitsRequest,
        model::CompileLimitsRequest,
        model::FileSpec,
        model::ExecutionResult,
        model::CompileResult,
        model::TestCase,
        model::CheckerRequest,
        model::ComparisonMode,
        model::Judging,
        model::CaseResult,
        model::CheckerResult,
        model::Verdict,
        runcell_egress::policy::NetworkRequest,
        runcell_egress::policy::EgressRequest,
        runcell_egress::policy::NetLimitsRequest,
        runcell_egress::NetworkStats,
        runcell_egress::Refusal,
        svc_executions::ExecutionObject,
        svc_executions::ExecutionList,
        runcell_service::LanguageInfo,
        executions::WebhookSecret,
        executions::DeliveryList,
        executions::DeliveryInfo,
        executions::AttemptInfo,
        operations::Health,
        error::ErrorBody,
        svc_sandboxes::CreateSandbox,
        svc_sandboxes::LimitsRequest,
        svc_sandboxes::SandboxObject,
        svc_sandboxes::SandboxState,
        svc_sandboxes::SandboxList,
        runcell_service::config::SandboxLimits,
        sandboxes::RenewRequest,
        svc_sandboxes::CodeRunRequest,
        svc_sandboxes::RunList,
        runs::ArtifactList,
        execd::CodeContextObject,
        execd::ExecdErrorBody,
        commands::CommandStatusObject,
        commands::SessionObject,
        model::Metrics,
        files::FileInfo,
        model::CodeRun,
        model::RunStatus,
        model::Execution,
        model::ResultItem,
        model::Artifact,
        model::Logs,
        model::RunError,
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
