//! The store conformance suite: what every [`Store`] implementation must do, written once
//! against the trait. A backend runs all of it with one line in its tests,
//! `crate::conformance_suite!(MyBackendHarness);`, where the harness implements [`Backend`]
//! (how to get a fresh store, reopen it on the same data, and count a table's rows).

use std::collections::HashSet;
use std::sync::Arc;

use crate::*;

/// What the suite needs of a backend besides the [`Store`] itself.
pub(crate) trait Backend: Sized + Send + Sync + 'static {
    /// A fresh, empty store (its own database).
    async fn fresh() -> Self;
    /// The store, shareable between tasks.
    fn shared(&self) -> Arc<dyn Store>;
    /// The store.
    fn store(&self) -> &dyn Store;
    /// The same database as another node sees it.
    fn as_node(&self, owner: Owner) -> Arc<dyn Store>;
    /// Drops the store without closing it (as a killed process would) and opens it again on
    /// the same data.
    async fn reopen(&mut self);
    /// The number of rows in `table`, read with the backend's own SQL: deletions must remove
    /// rows, not only hide them.
    async fn count_rows(&self, table: &str) -> i64;
}

/// Runs every conformance test against `$backend` (a [`Backend`]).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ty) => {
        mod conformance_suite {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn execution_round_trip() {
                $crate::conformance::execution_round_trip::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn finished_executions_are_inserted_final() {
                $crate::conformance::finished_executions_are_inserted_final::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn seq_is_strictly_increasing_even_after_deletes() {
                $crate::conformance::seq_is_strictly_increasing_even_after_deletes::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn tenant_isolation() {
                $crate::conformance::tenant_isolation::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn expiry_hides_and_delete_expired_removes_rows_and_deliveries() {
                $crate::conformance::expiry_hides_and_delete_expired_removes_rows_and_deliveries::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn delete_execution_takes_finished_ones_of_their_tenant_only() {
                $crate::conformance::delete_execution_takes_finished_ones_of_their_tenant_only::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn claim_is_fifo_and_atomic_status_change() {
                $crate::conformance::claim_is_fifo_and_atomic_status_change::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn claims_per_tenant_take_that_tenants_oldest_and_counts_are_per_tenant() {
                $crate::conformance::claims_per_tenant_take_that_tenants_oldest_and_counts_are_per_tenant::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_claims_take_each_row_exactly_once() {
                $crate::conformance::concurrent_claims_take_each_row_exactly_once::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn finish_only_once() {
                $crate::conformance::finish_only_once::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cancel_pending_only_for_pending() {
                $crate::conformance::cancel_pending_only_for_pending::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn fail_interrupted_fails_running_only() {
                $crate::conformance::fail_interrupted_fails_running_only::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn list_pagination_and_filters() {
                $crate::conformance::list_pagination_and_filters::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn webhook_secret_is_stable_and_shared_by_concurrent_callers() {
                $crate::conformance::webhook_secret_is_stable_and_shared_by_concurrent_callers::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn api_keys_round_trip() {
                $crate::conformance::api_keys_round_trip::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn deliveries_due_ordering_attempts_and_states() {
                $crate::conformance::deliveries_due_ordering_attempts_and_states::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn delivery_claims_are_exclusive_until_released_or_expired() {
                $crate::conformance::delivery_claims_are_exclusive_until_released_or_expired::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_delivery_claims_take_each_delivery_exactly_once() {
                $crate::conformance::concurrent_delivery_claims_take_each_delivery_exactly_once::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn several_deliveries_of_one_execution_listed_with_their_attempts() {
                $crate::conformance::several_deliveries_of_one_execution_listed_with_their_attempts::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn durable_across_reopen() {
                $crate::conformance::durable_across_reopen::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sandbox_round_trip_and_tenant_isolation() {
                $crate::conformance::sandbox_round_trip_and_tenant_isolation::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn leases_are_their_nodes_and_expire_unless_renewed() {
                $crate::conformance::leases_are_their_nodes_and_expire_unless_renewed::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_node_recovers_its_own_work_and_ends_sandboxes_of_silent_nodes() {
                $crate::conformance::a_node_recovers_its_own_work_and_ends_sandboxes_of_silent_nodes::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn renew_only_running_and_end_is_idempotent() {
                $crate::conformance::renew_only_running_and_end_is_idempotent::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn end_all_and_expired_sandboxes_take_running_ones_only() {
                $crate::conformance::end_all_and_expired_sandboxes_take_running_ones_only::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn list_sandboxes_pages_newest_first_with_status() {
                $crate::conformance::list_sandboxes_pages_newest_first_with_status::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn code_run_round_trip_and_tenant_isolation() {
                $crate::conformance::code_run_round_trip_and_tenant_isolation::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn update_code_run_never_overwrites_a_final_status() {
                $crate::conformance::update_code_run_never_overwrites_a_final_status::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unfinished_code_runs_of_one_sandbox_or_all() {
                $crate::conformance::unfinished_code_runs_of_one_sandbox_or_all::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn list_code_runs_pages_newest_first() {
                $crate::conformance::list_code_runs_pages_newest_first::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn artifacts_round_trip_isolation_and_listing() {
                $crate::conformance::artifacts_round_trip_isolation_and_listing::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn delete_expired_artifacts_returns_their_ids() {
                $crate::conformance::delete_expired_artifacts_returns_their_ids::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn keys_with_a_nul_character_are_missing() {
                $crate::conformance::keys_with_a_nul_character_are_missing::<$backend>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn purge_sandboxes_cascades_runs_and_artifacts() {
                $crate::conformance::purge_sandboxes_cascades_runs_and_artifacts::<$backend>().await;
            }
        }
    };
}

pub(crate) fn new_exec(id: &str, tenant: &str, status: ExecStatus) -> NewExecution {
    NewExecution {
        id: id.to_string(),
        tenant: tenant.to_string(),
        status,
        language: "python".to_string(),
        session_id: None,
        request: format!(r#"{{"language":"python","code":"print('{id}')"}}"#),
        callback_url: None,
        created_at: 1_000,
        started_at: (status == ExecStatus::Running).then_some(1_001),
    }
}

pub(crate) fn finish(status: ExecStatus, at: i64, expires_at: i64) -> Finish {
    Finish {
        status,
        result: Some(format!(r#"{{"status":"{}"}}"#, status.as_str())),
        failure_reason: (status == ExecStatus::Failed).then(|| "killed".to_string()),
        completed_at: at,
        expires_at,
    }
}

pub(crate) fn new_delivery(id: &str, execution_id: &str, tenant: &str, due: i64) -> NewDelivery {
    NewDelivery {
        id: id.to_string(),
        execution_id: execution_id.to_string(),
        tenant: tenant.to_string(),
        url: "https://example.com/hook".to_string(),
        method: "POST".to_string(),
        payload: format!(r#"{{"type":"execution.completed","id":"{execution_id}"}}"#),
        created_at: 2_000,
        next_attempt_at: due,
    }
}

pub(crate) fn attempt(at: i64, status_code: Option<u16>, error: Option<&str>) -> Attempt {
    Attempt {
        at,
        status_code,
        error: error.map(str::to_string),
        duration_ms: 12,
    }
}

/// Claims for `node` the deliveries due at `now` (a lease of 1 s), as the delivery loop does
/// before its attempts, and returns their ids.
pub(crate) async fn claim_due(s: &dyn Store, node: &str, now: i64) -> Vec<String> {
    s.claim_due_deliveries(node, now, now + 1_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect()
}

pub(crate) fn all(limit: u32) -> ListFilter {
    ListFilter {
        limit,
        ..ListFilter::default()
    }
}

pub(crate) async fn execution_round_trip<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    let mut e = new_exec("e1", "t1", ExecStatus::Running);
    e.session_id = Some("sess".into());
    e.callback_url = Some("https://example.com/cb".into());
    s.insert_execution(&e).await.unwrap();

    let row = s.get_execution("t1", "e1", 5_000).await.unwrap().unwrap();
    assert_eq!(row.id, "e1");
    assert_eq!(row.tenant, "t1");
    assert_eq!(row.status, ExecStatus::Running);
    assert_eq!(row.language, "python");
    assert_eq!(row.session_id.as_deref(), Some("sess"));
    assert_eq!(row.request, e.request);
    assert_eq!(row.callback_url.as_deref(), Some("https://example.com/cb"));
    assert_eq!(row.created_at, 1_000);
    assert_eq!(row.started_at, Some(1_001));
    assert_eq!(
        (
            row.result,
            row.failure_reason,
            row.completed_at,
            row.expires_at
        ),
        (None, None, None, None)
    );

    let f = finish(ExecStatus::Completed, 1_500, 100_000);
    assert!(s.finish_execution("e1", &f).await.unwrap());
    let row = s.get_execution("t1", "e1", 5_000).await.unwrap().unwrap();
    assert_eq!(row.status, ExecStatus::Completed);
    assert_eq!(row.result, f.result);
    assert_eq!(row.failure_reason, None);
    assert_eq!(row.completed_at, Some(1_500));
    assert_eq!(row.expires_at, Some(100_000));

    // A duplicate id is an error.
    assert!(matches!(
        s.insert_execution(&e).await,
        Err(StoreError::Database(_))
    ));
    assert!(
        s.get_execution("t1", "nope", 5_000)
            .await
            .unwrap()
            .is_none()
    );
}

pub(crate) async fn finished_executions_are_inserted_final<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    let mut e = new_exec("done", "t1", ExecStatus::Running);
    e.session_id = Some("sess".into());
    let f = finish(ExecStatus::Failed, 1_500, 100_000);
    s.insert_finished_execution(&e, &f).await.unwrap();

    let row = s.get_execution("t1", "done", 5_000).await.unwrap().unwrap();
    assert_eq!(row.status, ExecStatus::Failed);
    assert_eq!(row.language, "python");
    assert_eq!(row.session_id.as_deref(), Some("sess"));
    assert_eq!(row.request, e.request);
    assert_eq!((row.created_at, row.started_at), (1_000, Some(1_001)));
    assert_eq!(row.result, f.result);
    assert_eq!(row.failure_reason.as_deref(), Some("killed"));
    assert_eq!(
        (row.completed_at, row.expires_at),
        (Some(1_500), Some(100_000))
    );
    assert!(
        s.get_execution("t2", "done", 5_000)
            .await
            .unwrap()
            .is_none()
    );
    // Final: nothing finishes, interrupts or times it out again, and it expires as others do.
    assert!(!s.finish_execution("done", &f).await.unwrap());
    assert!(
        s.fail_interrupted("restart", 2_000, 3_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.fail_expired_leases("lost", i64::MAX / 2, i64::MAX / 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.execution_node("done").await.unwrap().is_none());

    // A duplicate id, or a status that is not final, is an error.
    assert!(matches!(
        s.insert_finished_execution(&e, &f).await,
        Err(StoreError::Database(_))
    ));
    assert!(matches!(
        s.insert_execution(&e).await,
        Err(StoreError::Database(_))
    ));
    let e2 = new_exec("other", "t1", ExecStatus::Running);
    let mut running = finish(ExecStatus::Completed, 1_500, 100_000);
    running.status = ExecStatus::Running;
    assert!(matches!(
        s.insert_finished_execution(&e2, &running).await,
        Err(StoreError::Database(_))
    ));
    assert!(
        s.get_execution("t1", "other", 5_000)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.delete_expired(100_000).await.unwrap(), 1);
}

pub(crate) async fn seq_is_strictly_increasing_even_after_deletes<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("a", "t", ExecStatus::Running))
        .await
        .unwrap();
    s.insert_execution(&new_exec("b", "t", ExecStatus::Running))
        .await
        .unwrap();
    let b = s.get_execution("t", "b", 0).await.unwrap().unwrap();
    // Expire and delete the newest row; the next one must still get a higher seq.
    s.finish_execution("b", &finish(ExecStatus::Completed, 1, 10))
        .await
        .unwrap();
    assert_eq!(s.delete_expired(10).await.unwrap(), 1);
    s.insert_execution(&new_exec("c", "t", ExecStatus::Running))
        .await
        .unwrap();
    let c = s.get_execution("t", "c", 0).await.unwrap().unwrap();
    assert!(c.seq > b.seq, "{} <= {}", c.seq, b.seq);
}

pub(crate) async fn tenant_isolation<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("e1", "alice", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("msg_1", "e1", "alice", 10))
        .await
        .unwrap();

    assert!(s.get_execution("bob", "e1", 0).await.unwrap().is_none());
    assert!(
        s.list_executions("bob", &all(100), 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.list_deliveries("bob", "e1").await.unwrap().is_empty());
    let f = finish(ExecStatus::Failed, 5, 100);
    assert!(!s.cancel_pending("bob", "e1", &f).await.unwrap());
    // Still pending for its owner.
    let row = s.get_execution("alice", "e1", 0).await.unwrap().unwrap();
    assert_eq!(row.status, ExecStatus::Pending);
    assert_eq!(
        s.list_executions("alice", &all(100), 0)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.list_deliveries("alice", "e1").await.unwrap().len(), 1);
    assert!(s.cancel_pending("alice", "e1", &f).await.unwrap());
}

pub(crate) async fn expiry_hides_and_delete_expired_removes_rows_and_deliveries<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    for id in ["old", "new", "open"] {
        s.insert_execution(&new_exec(id, "t", ExecStatus::Running))
            .await
            .unwrap();
    }
    s.finish_execution("old", &finish(ExecStatus::Completed, 10, 100))
        .await
        .unwrap();
    s.finish_execution("new", &finish(ExecStatus::Completed, 10, 200))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("msg_old", "old", "t", 50))
        .await
        .unwrap();
    assert_eq!(claim_due(s, "n1", 50).await, ["msg_old"]);
    assert!(
        s.record_attempt(
            "n1",
            "msg_old",
            &attempt(50, Some(500), None),
            DeliveryState::Pending,
            Some(60),
        )
        .await
        .unwrap()
    );
    s.insert_delivery(&new_delivery("msg_new", "new", "t", 50))
        .await
        .unwrap();

    // Before expiry everything is visible; expires_at <= now hides.
    assert!(s.get_execution("t", "old", 99).await.unwrap().is_some());
    assert!(s.get_execution("t", "old", 100).await.unwrap().is_none());
    assert!(s.get_execution("t", "new", 100).await.unwrap().is_some());
    assert!(
        s.get_execution("t", "open", 1_000_000)
            .await
            .unwrap()
            .is_some()
    );
    let ids: Vec<String> = s
        .list_executions("t", &all(10), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["open", "new"]);

    assert_eq!(s.delete_expired(99).await.unwrap(), 0);
    assert_eq!(s.delete_expired(100).await.unwrap(), 1);
    assert!(s.list_deliveries("t", "old").await.unwrap().is_empty());
    assert_eq!(s.list_deliveries("t", "new").await.unwrap().len(), 1);
    assert_eq!(
        b.count_rows("delivery_attempts").await,
        0,
        "attempts of deleted deliveries are deleted"
    );
    // The row is really gone, not only hidden.
    assert_eq!(b.count_rows("executions").await, 2);
    assert!(s.get_execution("t", "old", 0).await.unwrap().is_none());
    // A late attempt on a deleted delivery is dropped quietly.
    assert!(
        !s.record_attempt(
            "n1",
            "msg_old",
            &attempt(70, Some(200), None),
            DeliveryState::Delivered,
            None,
        )
        .await
        .unwrap()
    );

    assert_eq!(s.delete_expired(1_000).await.unwrap(), 1);
    assert!(s.list_deliveries("t", "new").await.unwrap().is_empty());
    assert!(s.get_execution("t", "open", 1_000).await.unwrap().is_some());
}

pub(crate) async fn delete_execution_takes_finished_ones_of_their_tenant_only<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    for (id, status) in [
        ("done", ExecStatus::Running),
        ("waiting", ExecStatus::Pending),
        ("busy", ExecStatus::Running),
    ] {
        s.insert_execution(&new_exec(id, "t", status))
            .await
            .unwrap();
    }
    s.finish_execution("done", &finish(ExecStatus::Completed, 10, 100))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("msg_done", "done", "t", 50))
        .await
        .unwrap();
    assert_eq!(claim_due(s, "n1", 50).await, ["msg_done"]);
    assert!(
        s.record_attempt(
            "n1",
            "msg_done",
            &attempt(50, Some(500), None),
            DeliveryState::Pending,
            Some(60),
        )
        .await
        .unwrap()
    );
    // Another tenant's, unfinished ones and missing ones are not deleted.
    assert!(!s.delete_execution("other", "done").await.unwrap());
    assert!(!s.delete_execution("t", "waiting").await.unwrap());
    assert!(!s.delete_execution("t", "busy").await.unwrap());
    assert!(!s.delete_execution("t", "nope").await.unwrap());
    assert!(s.get_execution("t", "done", 0).await.unwrap().is_some());
    assert!(s.delete_execution("t", "done").await.unwrap());
    assert!(s.get_execution("t", "done", 0).await.unwrap().is_none());
    assert!(s.list_deliveries("t", "done").await.unwrap().is_empty());
    assert_eq!(b.count_rows("delivery_attempts").await, 0);
    assert_eq!(b.count_rows("executions").await, 2);
    assert!(!s.delete_execution("t", "done").await.unwrap(), "only once");
}

pub(crate) async fn claim_is_fifo_and_atomic_status_change<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    assert!(s.claim_next_pending(1).await.unwrap().is_none());
    s.insert_execution(&new_exec("a", "t1", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_execution(&new_exec("sync", "t1", ExecStatus::Running))
        .await
        .unwrap();
    s.insert_execution(&new_exec("b", "t2", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_execution(&new_exec("c", "t1", ExecStatus::Pending))
        .await
        .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 3);

    let mut order = Vec::new();
    while let Some(row) = s.claim_next_pending(7_000).await.unwrap() {
        assert_eq!(row.status, ExecStatus::Running);
        assert_eq!(row.started_at, Some(7_000));
        order.push(row.id);
    }
    assert_eq!(order, ["a", "b", "c"]);
    assert_eq!(s.count_pending().await.unwrap(), 0);
    let a = s.get_execution("t1", "a", 0).await.unwrap().unwrap();
    assert_eq!(a.status, ExecStatus::Running);
    assert_eq!(a.started_at, Some(7_000));
}

pub(crate) async fn claims_per_tenant_take_that_tenants_oldest_and_counts_are_per_tenant<
    B: Backend,
>() {
    let b = B::fresh().await;
    let s = b.store();
    for (id, tenant, status) in [
        ("a1", "t1", ExecStatus::Pending),
        ("b1", "t2", ExecStatus::Pending),
        ("a-run", "t1", ExecStatus::Running),
        ("a2", "t1", ExecStatus::Pending),
        ("b2", "t2", ExecStatus::Pending),
        ("a3", "t1", ExecStatus::Pending),
    ] {
        s.insert_execution(&new_exec(id, tenant, status))
            .await
            .unwrap();
    }
    assert_eq!(
        s.count_pending_by_tenant().await.unwrap(),
        [("t1".to_string(), 3), ("t2".to_string(), 2)]
    );
    let b = s.claim_next_pending_of("t2", 9).await.unwrap().unwrap();
    assert_eq!(
        (b.id.as_str(), b.status, b.started_at),
        ("b1", ExecStatus::Running, Some(9))
    );
    let a = s.claim_next_pending_of("t1", 9).await.unwrap().unwrap();
    assert_eq!(a.id, "a1");
    assert!(s.claim_next_pending_of("t3", 9).await.unwrap().is_none());
    assert_eq!(
        s.claim_next_pending_of("t2", 9).await.unwrap().unwrap().id,
        "b2"
    );
    assert!(s.claim_next_pending_of("t2", 9).await.unwrap().is_none());
    assert_eq!(
        s.count_pending_by_tenant().await.unwrap(),
        [("t1".to_string(), 2)]
    );
}

pub(crate) async fn concurrent_claims_take_each_row_exactly_once<B: Backend>() {
    let b = B::fresh().await;
    let s = b.shared();
    const N: usize = 50;
    for i in 0..N {
        s.insert_execution(&new_exec(&format!("e{i:03}"), "t", ExecStatus::Pending))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(row) = s.claim_next_pending(1).await.expect("claim") {
                mine.push(row.id);
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    assert_eq!(claimed.len(), N, "every row claimed exactly once");
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), N);
    assert_eq!(s.count_pending().await.unwrap(), 0);
}

pub(crate) async fn finish_only_once<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("e", "t", ExecStatus::Running))
        .await
        .unwrap();
    let first = finish(ExecStatus::Failed, 10, 100);
    assert!(s.finish_execution("e", &first).await.unwrap());
    assert!(
        !s.finish_execution("e", &finish(ExecStatus::Completed, 20, 200))
            .await
            .unwrap()
    );
    let row = s.get_execution("t", "e", 0).await.unwrap().unwrap();
    assert_eq!(row.status, ExecStatus::Failed);
    assert_eq!(row.failure_reason.as_deref(), Some("killed"));
    assert_eq!((row.completed_at, row.expires_at), (Some(10), Some(100)));
    // Missing id.
    assert!(!s.finish_execution("nope", &first).await.unwrap());
    // A pending row can be finished directly.
    s.insert_execution(&new_exec("p", "t", ExecStatus::Pending))
        .await
        .unwrap();
    assert!(
        s.finish_execution("p", &finish(ExecStatus::Completed, 1, 2))
            .await
            .unwrap()
    );
    // A non-final status is refused.
    s.insert_execution(&new_exec("q", "t", ExecStatus::Running))
        .await
        .unwrap();
    assert!(
        s.finish_execution("q", &finish(ExecStatus::Running, 1, 2))
            .await
            .is_err()
    );
}

pub(crate) async fn cancel_pending_only_for_pending<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("p", "t", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_execution(&new_exec("r", "t", ExecStatus::Running))
        .await
        .unwrap();
    s.insert_execution(&new_exec("d", "t", ExecStatus::Running))
        .await
        .unwrap();
    s.finish_execution("d", &finish(ExecStatus::Completed, 5, 500))
        .await
        .unwrap();
    let f = Finish {
        status: ExecStatus::Failed,
        result: None,
        failure_reason: Some("cancelled".into()),
        completed_at: 9,
        expires_at: 900,
    };
    assert!(!s.cancel_pending("t", "r", &f).await.unwrap());
    assert!(!s.cancel_pending("t", "d", &f).await.unwrap());
    assert!(!s.cancel_pending("t", "missing", &f).await.unwrap());
    assert!(s.cancel_pending("t", "p", &f).await.unwrap());
    assert!(!s.cancel_pending("t", "p", &f).await.unwrap(), "only once");
    let p = s.get_execution("t", "p", 0).await.unwrap().unwrap();
    assert_eq!(p.status, ExecStatus::Failed);
    assert_eq!(p.failure_reason.as_deref(), Some("cancelled"));
    assert_eq!((p.completed_at, p.expires_at), (Some(9), Some(900)));
    assert!(s.claim_next_pending(10).await.unwrap().is_none());
    assert_eq!(
        s.get_execution("t", "r", 0).await.unwrap().unwrap().status,
        ExecStatus::Running
    );
    assert_eq!(
        s.get_execution("t", "d", 0).await.unwrap().unwrap().status,
        ExecStatus::Completed
    );
}

pub(crate) async fn fail_interrupted_fails_running_only<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("r1", "t1", ExecStatus::Running))
        .await
        .unwrap();
    s.insert_execution(&new_exec("p", "t1", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_execution(&new_exec("r2", "t2", ExecStatus::Running))
        .await
        .unwrap();
    s.insert_execution(&new_exec("c", "t1", ExecStatus::Running))
        .await
        .unwrap();
    s.finish_execution("c", &finish(ExecStatus::Completed, 5, 5_000))
        .await
        .unwrap();

    let failed = s
        .fail_interrupted("server restarted", 100, 1_000)
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = failed
        .iter()
        .map(|r| (r.id.as_str(), r.tenant.as_str()))
        .collect();
    assert_eq!(got, [("r1", "t1"), ("r2", "t2")]);
    for r in &failed {
        assert_eq!(r.status, ExecStatus::Failed);
        assert_eq!(r.failure_reason.as_deref(), Some("server restarted"));
        assert_eq!((r.completed_at, r.expires_at), (Some(100), Some(1_000)));
    }
    let r1 = s.get_execution("t1", "r1", 0).await.unwrap().unwrap();
    assert_eq!(r1.status, ExecStatus::Failed);
    assert_eq!(
        s.get_execution("t1", "p", 0).await.unwrap().unwrap().status,
        ExecStatus::Pending
    );
    let c = s.get_execution("t1", "c", 0).await.unwrap().unwrap();
    assert_eq!((c.status, c.completed_at), (ExecStatus::Completed, Some(5)));
    assert!(s.fail_interrupted("again", 1, 2).await.unwrap().is_empty());
}

pub(crate) async fn list_pagination_and_filters<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    for i in 0..10 {
        let status = if i % 2 == 0 {
            ExecStatus::Pending
        } else {
            ExecStatus::Running
        };
        let mut e = new_exec(&format!("e{i}"), "t", status);
        e.session_id = (i < 6).then(|| "s1".to_string());
        s.insert_execution(&e).await.unwrap();
    }
    s.insert_execution(&new_exec("other", "u", ExecStatus::Pending))
        .await
        .unwrap();
    let ids = |rows: Vec<ExecutionRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();

    // Pages of 4, newest first, following the cursor.
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let filter = ListFilter {
            before_seq: cursor,
            limit: 4,
            ..ListFilter::default()
        };
        let rows = s.list_executions("t", &filter, 0).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for w in rows.windows(2) {
            assert!(w[0].seq > w[1].seq);
        }
        cursor = rows.last().map(|r| r.seq);
        pages.push(ids(rows));
    }
    assert_eq!(
        pages,
        [
            vec!["e9", "e8", "e7", "e6"],
            vec!["e5", "e4", "e3", "e2"],
            vec!["e1", "e0"],
        ]
    );

    let session = ListFilter {
        session_id: Some("s1".into()),
        limit: 100,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(s.list_executions("t", &session, 0).await.unwrap()),
        ["e5", "e4", "e3", "e2", "e1", "e0"]
    );
    let pending_in_session = ListFilter {
        status: Some(ExecStatus::Pending),
        ..session.clone()
    };
    assert_eq!(
        ids(s
            .list_executions("t", &pending_in_session, 0)
            .await
            .unwrap()),
        ["e4", "e2", "e0"]
    );
    let running = ListFilter {
        status: Some(ExecStatus::Running),
        limit: 2,
        ..ListFilter::default()
    };
    let first = s.list_executions("t", &running, 0).await.unwrap();
    assert_eq!(ids(first.clone()), ["e9", "e7"]);
    let next = ListFilter {
        before_seq: first.last().map(|r| r.seq),
        ..running.clone()
    };
    assert_eq!(
        ids(s.list_executions("t", &next, 0).await.unwrap()),
        ["e5", "e3"]
    );
    let all_filters = ListFilter {
        session_id: Some("s1".into()),
        status: Some(ExecStatus::Running),
        before_seq: first.last().map(|r| r.seq),
        limit: 1,
    };
    assert_eq!(
        ids(s.list_executions("t", &all_filters, 0).await.unwrap()),
        ["e5"]
    );
    assert!(s.list_executions("t", &all(0), 0).await.unwrap().is_empty());
    let nobody = ListFilter {
        session_id: Some("nope".into()),
        limit: 10,
        ..ListFilter::default()
    };
    assert!(s.list_executions("t", &nobody, 0).await.unwrap().is_empty());
}

pub(crate) async fn webhook_secret_is_stable_and_shared_by_concurrent_callers<B: Backend>() {
    let b = B::fresh().await;
    let s = b.shared();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.webhook_secret("t", format!("whsec_candidate{i}")).await
        }));
    }
    let mut secrets = HashSet::new();
    for t in tasks {
        secrets.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let secret = secrets.into_iter().next().unwrap();
    assert!(secret.starts_with("whsec_candidate"));
    assert_eq!(
        s.webhook_secret("t", "whsec_other".into()).await.unwrap(),
        secret
    );
    assert_eq!(
        s.webhook_secret("u", "whsec_u".into()).await.unwrap(),
        "whsec_u"
    );
    assert_eq!(
        s.webhook_secret("u", "whsec_x".into()).await.unwrap(),
        "whsec_u"
    );
}

pub(crate) async fn api_keys_round_trip<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    assert!(s.api_keys().await.unwrap().is_empty());
    s.insert_api_key("hash1", "t1", 10).await.unwrap();
    s.insert_api_key("hash2", "t2", 20).await.unwrap();
    assert!(s.insert_api_key("hash1", "t3", 30).await.is_err());
    assert_eq!(
        s.api_keys().await.unwrap(),
        [
            ("hash1".to_string(), "t1".to_string()),
            ("hash2".to_string(), "t2".to_string())
        ]
    );
}

pub(crate) async fn deliveries_due_ordering_attempts_and_states<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    assert_eq!(s.next_delivery_due().await.unwrap(), None);
    assert!(s.due_deliveries(i64::MAX, 10).await.unwrap().is_empty());
    s.insert_delivery(&new_delivery("msg_c", "ec", "t", 300))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("msg_a", "ea", "t", 100))
        .await
        .unwrap();
    let mut put = new_delivery("msg_b", "eb", "t", 200);
    put.method = "PUT".into();
    s.insert_delivery(&put).await.unwrap();
    // A duplicate id is ignored (the first one stays).
    let mut dup = new_delivery("msg_a", "ea", "t", 5);
    dup.payload = "other".into();
    s.insert_delivery(&dup).await.unwrap();

    assert_eq!(s.next_delivery_due().await.unwrap(), Some(100));
    assert!(s.due_deliveries(99, 10).await.unwrap().is_empty());
    let due = s.due_deliveries(250, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["msg_a", "msg_b"]);
    let a = &due[0];
    assert_eq!(a.state, DeliveryState::Pending);
    assert_eq!(a.next_attempt_at, Some(100));
    assert_eq!(a.execution_id, "ea");
    assert_eq!(a.tenant, "t");
    assert_eq!(a.url, "https://example.com/hook");
    assert_eq!(a.method, "POST");
    assert_eq!(due[1].method, "PUT", "the method is kept");
    assert_eq!(a.payload, new_delivery("msg_a", "ea", "t", 0).payload);
    assert_eq!(a.created_at, 2_000);
    assert!(a.attempts.is_empty());
    let ids: Vec<String> = s
        .due_deliveries(1_000, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["msg_a", "msg_b"], "limit");

    // Each attempt is made under a claim (the claim itself is tested below).
    // msg_a: fails twice (retry later), then succeeds.
    assert_eq!(
        s.claim_due_deliveries("n1", 100, 150, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        ["msg_a"]
    );
    let a1 = attempt(100, Some(500), None);
    assert!(
        s.record_attempt("n1", "msg_a", &a1, DeliveryState::Pending, Some(400))
            .await
            .unwrap()
    );
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(200));
    let due: Vec<String> = s
        .due_deliveries(350, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, ["msg_b", "msg_c"]);
    let due = s.due_deliveries(400, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["msg_b", "msg_c", "msg_a"]);
    assert_eq!(due[2].attempts, std::slice::from_ref(&a1));
    assert_eq!(due[2].next_attempt_at, Some(400));
    assert_eq!(
        (due[2].claimed_by.as_deref(), due[2].lease_until),
        (None, None)
    );

    // msg_b: refused permanently.
    assert_eq!(claim_due(s, "n1", 200).await, ["msg_b"]);
    let b1 = attempt(200, Some(410), None);
    assert!(
        s.record_attempt("n1", "msg_b", &b1, DeliveryState::Failed, None)
            .await
            .unwrap()
    );
    let b = &s.list_deliveries("t", "eb").await.unwrap()[0];
    assert_eq!(
        (b.state, b.next_attempt_at, b.attempts.as_slice()),
        (DeliveryState::Failed, None, [b1].as_slice())
    );

    assert_eq!(claim_due(s, "n1", 400).await, ["msg_c", "msg_a"]);
    let a2 = attempt(400, None, Some("connect timeout"));
    assert!(
        s.record_attempt("n1", "msg_a", &a2, DeliveryState::Pending, Some(900))
            .await
            .unwrap()
    );
    // msg_c's claim (lease until 1400) has passed by 1500; msg_a is due again at 900.
    assert_eq!(claim_due(s, "n1", 1_500).await, ["msg_c", "msg_a"]);
    let a3 = attempt(1_500, Some(204), None);
    // next_attempt_at is ignored for a final state.
    assert!(
        s.record_attempt("n1", "msg_a", &a3, DeliveryState::Delivered, Some(5_000))
            .await
            .unwrap()
    );
    let listed = s.list_deliveries("t", "ea").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, DeliveryState::Delivered);
    assert_eq!(listed[0].next_attempt_at, None);
    assert_eq!(listed[0].attempts, [a1, a2, a3]);
    assert_eq!(
        (listed[0].claimed_by.as_deref(), listed[0].lease_until),
        (None, None),
        "recording releases the claim"
    );
    // A delivered or failed delivery is never claimed again.
    assert!(claim_due(s, "n2", 2_499).await.is_empty());

    // Only msg_c is still pending, claimed by n1 until 2500: it is due for nobody before.
    assert!(s.due_deliveries(2_499, 10).await.unwrap().is_empty());
    let due: Vec<String> = s
        .due_deliveries(2_500, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, ["msg_c"]);
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(2_500));
    // A pending state without a next attempt time is refused (it would never be retried).
    assert!(
        s.record_attempt(
            "n1",
            "msg_c",
            &attempt(1, None, None),
            DeliveryState::Pending,
            None
        )
        .await
        .is_err()
    );
    let c = &s.list_deliveries("t", "ec").await.unwrap()[0];
    assert!(c.attempts.is_empty());
    assert_eq!(
        (c.claimed_by.as_deref(), c.lease_until),
        (Some("n1"), Some(2_500))
    );
}

/// A due delivery is claimed by one node at a time, for one attempt: the claim is released
/// by recording the attempt, or lapses when its lease passes (then another node takes it and
/// the first one's attempt is not recorded: it counts as not made).
pub(crate) async fn delivery_claims_are_exclusive_until_released_or_expired<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_delivery(&new_delivery("d1", "e1", "t", 100))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("d2", "e2", "t", 100))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("d3", "e3", "t", 500))
        .await
        .unwrap();

    let got = s.claim_due_deliveries("n1", 100, 1_000, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "d1");
    assert_eq!(
        (got[0].claimed_by.as_deref(), got[0].lease_until),
        (Some("n1"), Some(1_000))
    );
    assert_eq!(got[0].state, DeliveryState::Pending);
    assert_eq!(got[0].payload, new_delivery("d1", "e1", "t", 0).payload);
    // Another node takes what is left due, never n1's.
    let got = s.claim_due_deliveries("n2", 100, 1_000, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d2"]
    );
    // Claimed deliveries are due for nobody while their leases last; d3 is not due yet.
    assert!(claim_due(s, "n3", 200).await.is_empty());
    assert!(claim_due(s, "n1", 200).await.is_empty());
    assert!(s.due_deliveries(200, 10).await.unwrap().is_empty());
    let listed = s.list_deliveries("t", "e1").await.unwrap();
    assert_eq!(
        (listed[0].claimed_by.as_deref(), listed[0].lease_until),
        (Some("n1"), Some(1_000))
    );
    // The earliest a delivery can be claimed: d3 at 500 (d1 and d2 are claimed until 1000).
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(500));

    // Only the claim's holder records an attempt.
    assert!(
        !s.record_attempt(
            "n2",
            "d1",
            &attempt(150, Some(200), None),
            DeliveryState::Delivered,
            None
        )
        .await
        .unwrap()
    );
    let d1 = &s.list_deliveries("t", "e1").await.unwrap()[0];
    assert_eq!(d1.state, DeliveryState::Pending);
    assert!(d1.attempts.is_empty());
    assert_eq!(d1.claimed_by.as_deref(), Some("n1"));
    assert!(
        s.record_attempt(
            "n1",
            "d1",
            &attempt(150, Some(500), None),
            DeliveryState::Pending,
            Some(300)
        )
        .await
        .unwrap()
    );
    let d1 = &s.list_deliveries("t", "e1").await.unwrap()[0];
    assert_eq!((d1.claimed_by.as_deref(), d1.lease_until), (None, None));
    assert_eq!(d1.next_attempt_at, Some(300));
    assert_eq!(d1.attempts.len(), 1);
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(300));
    // Released: recording again under the old claim is refused.
    assert!(
        !s.record_attempt(
            "n1",
            "d1",
            &attempt(160, Some(200), None),
            DeliveryState::Delivered,
            None
        )
        .await
        .unwrap()
    );

    // At 1000 n2's lease on d2 has passed: n3 takes it, with d1 and d3.
    let got = s
        .claim_due_deliveries("n3", 1_000, 2_000, 10)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d2", "d1", "d3"]
    );
    assert!(
        got.iter()
            .all(|d| d.claimed_by.as_deref() == Some("n3") && d.lease_until == Some(2_000))
    );
    assert_eq!(
        got[1].attempts.len(),
        1,
        "a claim returns the attempts so far"
    );
    // n2, late, cannot record its attempt: it is not made, d2 stays n3's.
    assert!(
        !s.record_attempt(
            "n2",
            "d2",
            &attempt(1_100, Some(200), None),
            DeliveryState::Delivered,
            None
        )
        .await
        .unwrap()
    );
    let d2 = &s.list_deliveries("t", "e2").await.unwrap()[0];
    assert!(d2.attempts.is_empty());
    assert_eq!(
        (d2.state, d2.claimed_by.as_deref()),
        (DeliveryState::Pending, Some("n3"))
    );
    assert!(
        s.record_attempt(
            "n3",
            "d2",
            &attempt(1_200, Some(200), None),
            DeliveryState::Delivered,
            None
        )
        .await
        .unwrap()
    );
    // A lapsed claim nobody took is still its node's: the attempt is recorded.
    assert!(
        s.record_attempt(
            "n3",
            "d3",
            &attempt(2_500, Some(410), None),
            DeliveryState::Failed,
            None
        )
        .await
        .unwrap()
    );
    let d2 = &s.list_deliveries("t", "e2").await.unwrap()[0];
    assert_eq!(
        (d2.state, d2.attempts.len(), d2.claimed_by.as_deref()),
        (DeliveryState::Delivered, 1, None)
    );
    // Only d1 is left to deliver, claimed by n3 until 2000.
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(2_000));
    assert!(claim_due(s, "n1", 1_999).await.is_empty());
    assert_eq!(claim_due(s, "n1", 2_000).await, ["d1"]);
}

/// Claimers racing on one store each take different deliveries: every due delivery is
/// claimed exactly once while the leases last.
pub(crate) async fn concurrent_delivery_claims_take_each_delivery_exactly_once<B: Backend>() {
    let b = B::fresh().await;
    let s = b.shared();
    const N: usize = 60;
    for i in 0..N {
        s.insert_delivery(&new_delivery(
            &format!("d{i:03}"),
            &format!("e{i}"),
            "t",
            10,
        ))
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for n in 0..6 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let node = format!("n{n}");
            let mut mine = Vec::new();
            // Bounded: claims that never run out fail the test rather than hang it.
            for _ in 0..=N {
                let got = s
                    .claim_due_deliveries(&node, 100, 1_000_000, 4)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                for d in got {
                    assert_eq!(d.claimed_by.as_deref(), Some(node.as_str()));
                    mine.push(d.id);
                }
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a delivery was claimed twice");
    assert_eq!(claimed.len(), N, "every delivery claimed");
    assert!(s.due_deliveries(100, 100).await.unwrap().is_empty());
}

pub(crate) async fn several_deliveries_of_one_execution_listed_with_their_attempts<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    let mut d1 = new_delivery("msg_1", "e", "t", 10);
    d1.created_at = 1;
    let mut d2 = new_delivery("msg_2", "e", "t", 10);
    d2.created_at = 2;
    s.insert_delivery(&d2).await.unwrap();
    s.insert_delivery(&d1).await.unwrap();
    for i in 0..3 {
        assert_eq!(claim_due(s, "n1", 10).await.len(), 2);
        assert!(
            s.record_attempt(
                "n1",
                "msg_2",
                &attempt(i, Some(500), None),
                DeliveryState::Pending,
                Some(10),
            )
            .await
            .unwrap()
        );
        assert!(
            s.record_attempt(
                "n1",
                "msg_1",
                &attempt(100 + i, None, Some("refused")),
                DeliveryState::Pending,
                Some(10),
            )
            .await
            .unwrap()
        );
    }
    let listed = s.list_deliveries("t", "e").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, "msg_1");
    assert_eq!(
        listed[0].attempts.iter().map(|a| a.at).collect::<Vec<_>>(),
        [100, 101, 102]
    );
    assert_eq!(listed[1].id, "msg_2");
    assert_eq!(
        listed[1].attempts.iter().map(|a| a.at).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let due = s.due_deliveries(10, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|d| d.attempts.len() == 3));
}

pub(crate) async fn durable_across_reopen<B: Backend>() {
    let mut b = B::fresh().await;
    {
        let s = b.store();
        s.insert_execution(&new_exec("p", "t", ExecStatus::Pending))
            .await
            .unwrap();
        s.insert_execution(&new_exec("r", "t", ExecStatus::Running))
            .await
            .unwrap();
        s.insert_delivery(&new_delivery("msg", "r", "t", 10))
            .await
            .unwrap();
        assert_eq!(claim_due(s, "n1", 10).await, ["msg"]);
        assert!(
            s.record_attempt(
                "n1",
                "msg",
                &attempt(10, Some(503), None),
                DeliveryState::Pending,
                Some(20),
            )
            .await
            .unwrap()
        );
        s.insert_delivery(&new_delivery("msg_claimed", "p", "t", 10))
            .await
            .unwrap();
        assert_eq!(claim_due(s, "n1", 15).await, ["msg_claimed"]);
        s.insert_api_key("h", "t", 1).await.unwrap();
        assert_eq!(
            s.webhook_secret("t", "whsec_1".into()).await.unwrap(),
            "whsec_1"
        );
    }
    // Dropped without closing, like a killed process, and opened again.
    b.reopen().await;
    let s = b.store();
    assert_eq!(s.count_pending().await.unwrap(), 1);
    assert_eq!(
        s.get_execution("t", "r", 0).await.unwrap().unwrap().status,
        ExecStatus::Running
    );
    let failed = s.fail_interrupted("restart", 30, 40).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(s.claim_next_pending(31).await.unwrap().unwrap().id, "p");
    let d = s.due_deliveries(20, 10).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempts.len(), 1);
    // A claim outlives the process that made it, until its lease passes.
    let c = &s.list_deliveries("t", "p").await.unwrap()[0];
    assert_eq!(
        (c.claimed_by.as_deref(), c.lease_until),
        (Some("n1"), Some(1_015))
    );
    assert_eq!(claim_due(s, "n2", 1_014).await, ["msg"]);
    assert_eq!(claim_due(s, "n2", 1_015).await, ["msg_claimed"]);
    assert_eq!(s.api_keys().await.unwrap(), [("h".into(), "t".into())]);
    assert_eq!(
        s.webhook_secret("t", "whsec_2".into()).await.unwrap(),
        "whsec_1"
    );
}

pub(crate) fn new_sandbox(id: &str, tenant: &str, expires_at: i64) -> NewSandbox {
    NewSandbox {
        id: id.to_string(),
        tenant: tenant.to_string(),
        access_token_hash: format!("hash-of-{id}"),
        spec: format!(r#"{{"limits":{{"memory_mb":512}},"metadata":{{"name":"{id}"}}}}"#),
        created_at: 1_000,
        expires_at,
    }
}

pub(crate) fn new_run(id: &str, tenant: &str, sandbox_id: &str, status: RunStatus) -> CodeRunRow {
    CodeRunRow {
        id: id.to_string(),
        tenant: tenant.to_string(),
        sandbox_id: sandbox_id.to_string(),
        context_id: "ctx_1".to_string(),
        status,
        doc: format!(r#"{{"id":"{id}","status":"{}"}}"#, status.as_str()),
        created_at: 2_000,
        seq: 0,
    }
}

pub(crate) fn new_artifact(id: &str, tenant: &str, sandbox_id: &str, run_id: &str) -> ArtifactRow {
    ArtifactRow {
        id: id.to_string(),
        tenant: tenant.to_string(),
        sandbox_id: sandbox_id.to_string(),
        run_id: run_id.to_string(),
        context_id: "ctx_1".to_string(),
        name: format!("out/{id}.png"),
        mime_type: "image/png".to_string(),
        size_bytes: 1234,
        sha256: "ab".repeat(32),
        execution_count: Some(3),
        metadata: r#"{"width":640}"#.to_string(),
        created_at: 3_000,
        expires_at: 100_000,
    }
}

pub(crate) fn sandbox_ids(rows: &[SandboxRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

pub(crate) fn run_ids(rows: &[CodeRunRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

pub(crate) fn artifact_ids(rows: &[ArtifactRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

pub(crate) fn sandboxes(limit: u32) -> SandboxFilter {
    SandboxFilter {
        limit,
        ..SandboxFilter::default()
    }
}

pub(crate) async fn sandbox_round_trip_and_tenant_isolation<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    let sb = new_sandbox("sb_1", "alice", 50_000);
    s.insert_sandbox(&sb).await.unwrap();

    let row = s.get_sandbox("alice", "sb_1").await.unwrap().unwrap();
    assert_eq!(row.id, "sb_1");
    assert_eq!(row.tenant, "alice");
    assert_eq!(row.status, SandboxStatus::Running);
    assert_eq!(row.access_token_hash, "hash-of-sb_1");
    assert_eq!(row.spec, sb.spec);
    assert_eq!((row.created_at, row.expires_at), (1_000, 50_000));
    assert_eq!((row.ended_at, row.end_reason.as_deref()), (None, None));
    assert_eq!(
        s.get_sandbox_by_id("sb_1").await.unwrap(),
        Some(row.clone())
    );
    assert_eq!(
        s.list_sandboxes("alice", &sandboxes(10)).await.unwrap(),
        std::slice::from_ref(&row)
    );

    // Another tenant sees nothing and changes nothing.
    assert!(s.get_sandbox("bob", "sb_1").await.unwrap().is_none());
    assert!(
        s.list_sandboxes("bob", &sandboxes(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!s.renew_sandbox("bob", "sb_1", 99_000).await.unwrap());
    assert_eq!(
        s.get_sandbox("alice", "sb_1")
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        50_000
    );

    // Missing ids.
    assert!(s.get_sandbox("alice", "sb_x").await.unwrap().is_none());
    assert!(s.get_sandbox_by_id("sb_x").await.unwrap().is_none());
    // A duplicate id is an error, even for another tenant.
    assert!(matches!(
        s.insert_sandbox(&new_sandbox("sb_1", "bob", 1)).await,
        Err(StoreError::Database(_))
    ));
}

fn owner(node: &str) -> Owner {
    Owner {
        node: node.into(),
        lease_ms: 15_000,
    }
}

fn beat(address: &str) -> NodeBeat {
    NodeBeat {
        address: address.into(),
        started_at: 1,
        running: 2,
        queued: 3,
        sandboxes: 4,
    }
}

fn pending(id: &str, tenant: &str, created_at: i64) -> NewExecution {
    NewExecution {
        id: id.into(),
        tenant: tenant.into(),
        status: ExecStatus::Pending,
        language: "python".into(),
        session_id: None,
        request: "{}".into(),
        callback_url: None,
        created_at,
        started_at: None,
    }
}

pub(crate) async fn leases_are_their_nodes_and_expire_unless_renewed<B: Backend>() {
    let b = B::fresh().await;
    let a = b.as_node(owner("node-a"));
    let other = b.as_node(owner("node-b"));
    a.insert_execution(&pending("e1", "t", 1)).await.unwrap();
    a.insert_execution(&pending("e2", "t", 2)).await.unwrap();
    // Claimed by a at 1_000 and by b at 2_000: leases until 16_000 and 17_000.
    assert_eq!(a.claim_next_pending(1_000).await.unwrap().unwrap().id, "e1");
    assert_eq!(
        other
            .claim_next_pending_of("t", 2_000)
            .await
            .unwrap()
            .unwrap()
            .id,
        "e2"
    );
    // A synchronous run starts running on a at 3_000: until 18_000.
    a.insert_execution(&NewExecution {
        status: ExecStatus::Running,
        started_at: Some(3_000),
        ..pending("e3", "t", 3_000)
    })
    .await
    .unwrap();
    let fail = |s: Arc<dyn Store>, now: i64| async move {
        let rows = s.fail_expired_leases("lost", now, now + 100).await.unwrap();
        rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert!(fail(b.shared(), 15_999).await.is_empty());
    // Who runs what.
    other.heartbeat(1_500, &beat("http://b")).await.unwrap();
    assert_eq!(
        a.execution_node("e2").await.unwrap(),
        Some(("node-b".into(), "http://b".into()))
    );
    assert_eq!(
        other.execution_node("e1").await.unwrap(),
        Some(("node-a".into(), String::new()))
    );
    assert_eq!(a.execution_node("e_missing").await.unwrap(), None);
    // a's heartbeat at 10_000 renews its leases (e1 and e3) to 25_000, not b's.
    assert_eq!(a.heartbeat(10_000, &beat("http://a")).await.unwrap(), 2);
    assert_eq!(fail(b.shared(), 17_001).await, ["e2"]);
    let e2 = a.get_execution("t", "e2", 17_001).await.unwrap().unwrap();
    assert_eq!(e2.status, ExecStatus::Failed);
    assert_eq!(e2.failure_reason.as_deref(), Some("lost"));
    assert_eq!(a.execution_node("e2").await.unwrap(), None);
    // A finished execution keeps no lease.
    assert!(
        a.finish_execution(
            "e1",
            &Finish {
                status: ExecStatus::Completed,
                result: Some("{}".into()),
                failure_reason: None,
                completed_at: 20_000,
                expires_at: 90_000,
            }
        )
        .await
        .unwrap()
    );
    assert!(fail(b.shared(), 24_999).await.is_empty());
    assert_eq!(fail(b.shared(), 25_001).await, ["e3"]);
    // The registry.
    other.heartbeat(11_000, &beat("http://b")).await.unwrap();
    a.heartbeat(12_000, &beat("http://a2")).await.unwrap();
    let nodes = b.store().list_nodes().await.unwrap();
    assert_eq!(
        nodes,
        [
            NodeRow {
                id: "node-a".into(),
                address: "http://a2".into(),
                started_at: 1,
                heartbeat_at: 12_000,
                running: 2,
                queued: 3,
                sandboxes: 4,
            },
            NodeRow {
                id: "node-b".into(),
                address: "http://b".into(),
                started_at: 1,
                heartbeat_at: 11_000,
                running: 2,
                queued: 3,
                sandboxes: 4,
            }
        ]
    );
}

pub(crate) async fn a_node_recovers_its_own_work_and_ends_sandboxes_of_silent_nodes<B: Backend>() {
    let b = B::fresh().await;
    let a = b.as_node(owner("node-a"));
    let other = b.as_node(owner("node-b"));
    a.insert_execution(&pending("ea", "t", 1)).await.unwrap();
    other
        .insert_execution(&pending("eb", "t", 2))
        .await
        .unwrap();
    assert_eq!(a.claim_next_pending(10).await.unwrap().unwrap().id, "ea");
    assert_eq!(
        other.claim_next_pending(10).await.unwrap().unwrap().id,
        "eb"
    );
    // node-a restarts: its own running work fails at once, node-b's is left alone.
    let failed = a.fail_interrupted("restarted", 20, 100).await.unwrap();
    assert_eq!(
        failed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["ea"]
    );
    assert_eq!(
        a.get_execution("t", "eb", 20)
            .await
            .unwrap()
            .unwrap()
            .status,
        ExecStatus::Running
    );

    a.insert_sandbox(&new_sandbox("sb_a", "t", 50_000))
        .await
        .unwrap();
    other
        .insert_sandbox(&new_sandbox("sb_b", "t", 50_000))
        .await
        .unwrap();
    other
        .heartbeat(1_000, &beat("http://b:8002"))
        .await
        .unwrap();
    assert_eq!(
        a.sandbox_node("sb_b").await.unwrap(),
        Some(("node-b".into(), "http://b:8002".into()))
    );
    assert_eq!(
        other.sandbox_node("sb_a").await.unwrap(),
        Some(("node-a".into(), String::new()))
    );
    assert_eq!(a.sandbox_node("sb_missing").await.unwrap(), None);
    // An artifact's node is its sandbox's.
    other
        .insert_code_run(&new_run("run_b", "t", "sb_b", RunStatus::Succeeded))
        .await
        .unwrap();
    other
        .insert_artifacts(&[new_artifact("art_b", "t", "sb_b", "run_b")])
        .await
        .unwrap();
    assert_eq!(
        a.artifact_node("art_b").await.unwrap(),
        Some(("node-b".into(), "http://b:8002".into()))
    );
    assert_eq!(a.artifact_node("art_missing").await.unwrap(), None);
    // node-a restarts: its sandboxes end, node-b's stay.
    assert_eq!(
        a.end_all_sandboxes(30, "restarted").await.unwrap(),
        ["sb_a"]
    );
    assert_eq!(a.sandbox_node("sb_a").await.unwrap(), None);
    // node-b heart-beat at 1_000: silent since 1_001, not since 1_000.
    assert!(
        a.end_sandboxes_of_silent_nodes(1_000, 40, "gone")
            .await
            .unwrap()
            .is_empty()
    );
    // A node never ends its own sandboxes this way.
    assert!(
        other
            .end_sandboxes_of_silent_nodes(5_000, 40, "gone")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        a.end_sandboxes_of_silent_nodes(1_001, 40, "gone")
            .await
            .unwrap(),
        ["sb_b"]
    );
    let row = a.get_sandbox("t", "sb_b").await.unwrap().unwrap();
    assert_eq!(row.status, SandboxStatus::Terminated);
    assert_eq!(row.end_reason.as_deref(), Some("gone"));
}

pub(crate) async fn renew_only_running_and_end_is_idempotent<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_1", "t", 10_000))
        .await
        .unwrap();
    assert!(s.renew_sandbox("t", "sb_1", 20_000).await.unwrap());
    assert_eq!(
        s.get_sandbox("t", "sb_1")
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        20_000
    );
    assert!(!s.renew_sandbox("t", "sb_missing", 20_000).await.unwrap());
    // The spec (its metadata) of a running sandbox of the tenant may change.
    assert!(
        !s.set_sandbox_spec("other", "sb_1", "{\"x\":1}")
            .await
            .unwrap()
    );
    assert!(s.set_sandbox_spec("t", "sb_1", "{\"x\":2}").await.unwrap());
    assert_eq!(
        s.get_sandbox("t", "sb_1").await.unwrap().unwrap().spec,
        "{\"x\":2}"
    );

    assert!(s.end_sandbox("sb_1", 15_000, "deleted").await.unwrap());
    let ended = s.get_sandbox("t", "sb_1").await.unwrap().unwrap();
    assert_eq!(ended.status, SandboxStatus::Terminated);
    assert_eq!(ended.ended_at, Some(15_000));
    assert_eq!(ended.end_reason.as_deref(), Some("deleted"));

    // A second end changes nothing; a terminated sandbox is not renewed.
    assert!(!s.end_sandbox("sb_1", 16_000, "expired").await.unwrap());
    assert!(!s.renew_sandbox("t", "sb_1", 90_000).await.unwrap());
    assert!(!s.set_sandbox_spec("t", "sb_1", "{}").await.unwrap());
    assert_eq!(s.get_sandbox("t", "sb_1").await.unwrap().unwrap(), ended);
    assert!(!s.end_sandbox("sb_missing", 1, "x").await.unwrap());
}

pub(crate) async fn end_all_and_expired_sandboxes_take_running_ones_only<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_a", "t1", 300))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_b", "t2", 100))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_c", "t1", 200))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_done", "t1", 50))
        .await
        .unwrap();
    assert!(s.end_sandbox("sb_done", 60, "deleted").await.unwrap());

    assert!(s.expired_sandboxes(99).await.unwrap().is_empty());
    assert_eq!(s.expired_sandboxes(100).await.unwrap(), ["sb_b"]);
    // Soonest expired first, across tenants; terminated ones never.
    assert_eq!(
        s.expired_sandboxes(1_000).await.unwrap(),
        ["sb_b", "sb_c", "sb_a"]
    );
    assert!(s.renew_sandbox("t2", "sb_b", 5_000).await.unwrap());
    assert_eq!(s.expired_sandboxes(1_000).await.unwrap(), ["sb_c", "sb_a"]);

    let ended = s.end_all_sandboxes(700, "server restarted").await.unwrap();
    assert_eq!(
        ended,
        ["sb_a", "sb_b", "sb_c"],
        "running ones, oldest first"
    );
    for id in ["sb_a", "sb_b", "sb_c"] {
        let row = s.get_sandbox_by_id(id).await.unwrap().unwrap();
        assert_eq!(row.status, SandboxStatus::Terminated);
        assert_eq!(row.ended_at, Some(700));
        assert_eq!(row.end_reason.as_deref(), Some("server restarted"));
    }
    let done = s.get_sandbox_by_id("sb_done").await.unwrap().unwrap();
    assert_eq!(
        (done.ended_at, done.end_reason.as_deref()),
        (Some(60), Some("deleted"))
    );
    assert!(s.end_all_sandboxes(800, "again").await.unwrap().is_empty());
    assert!(s.expired_sandboxes(i64::MAX).await.unwrap().is_empty());
}

pub(crate) async fn list_sandboxes_pages_newest_first_with_status<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    for i in 0..7 {
        s.insert_sandbox(&new_sandbox(&format!("sb_{i}"), "t", 1_000))
            .await
            .unwrap();
    }
    s.insert_sandbox(&new_sandbox("sb_other", "u", 1_000))
        .await
        .unwrap();
    for i in [1, 4, 5] {
        assert!(
            s.end_sandbox(&format!("sb_{i}"), 10, "deleted")
                .await
                .unwrap()
        );
    }

    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let f = SandboxFilter {
            before_seq: cursor,
            limit: 3,
            ..SandboxFilter::default()
        };
        let rows = s.list_sandboxes("t", &f).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for w in rows.windows(2) {
            assert!(w[0].seq > w[1].seq);
        }
        cursor = rows.last().map(|r| r.seq);
        pages.push(sandbox_ids(&rows).join(","));
    }
    assert_eq!(pages, ["sb_6,sb_5,sb_4", "sb_3,sb_2,sb_1", "sb_0"]);

    let running = SandboxFilter {
        status: Some(SandboxStatus::Running),
        limit: 2,
        ..SandboxFilter::default()
    };
    let first = s.list_sandboxes("t", &running).await.unwrap();
    assert_eq!(sandbox_ids(&first), ["sb_6", "sb_3"]);
    let next = SandboxFilter {
        before_seq: first.last().map(|r| r.seq),
        ..running.clone()
    };
    assert_eq!(
        sandbox_ids(&s.list_sandboxes("t", &next).await.unwrap()),
        ["sb_2", "sb_0"]
    );
    let terminated = SandboxFilter {
        status: Some(SandboxStatus::Terminated),
        limit: 10,
        ..SandboxFilter::default()
    };
    assert_eq!(
        sandbox_ids(&s.list_sandboxes("t", &terminated).await.unwrap()),
        ["sb_5", "sb_4", "sb_1"]
    );
    assert!(
        s.list_sandboxes("t", &sandboxes(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.list_sandboxes("u", &terminated).await.unwrap().is_empty());
}

pub(crate) async fn code_run_round_trip_and_tenant_isolation<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_1", "alice", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_2", "alice", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_b", "bob", 1_000))
        .await
        .unwrap();
    let run = new_run("run_1", "alice", "sb_1", RunStatus::Queued);
    s.insert_code_run(&run).await.unwrap();

    let row = s
        .get_code_run("alice", "sb_1", "run_1")
        .await
        .unwrap()
        .unwrap();
    assert!(row.seq > 0);
    assert_eq!(
        row,
        CodeRunRow {
            seq: row.seq,
            ..run.clone()
        }
    );
    assert_eq!(
        s.list_code_runs("alice", "sb_1", None, 10).await.unwrap(),
        std::slice::from_ref(&row)
    );

    // Another tenant, or another sandbox of the same tenant, sees nothing.
    assert!(
        s.get_code_run("bob", "sb_1", "run_1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_code_run("alice", "sb_2", "run_1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.list_code_runs("bob", "sb_1", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.list_code_runs("alice", "sb_2", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A duplicate id is an error; so is a run in a missing or another tenant's sandbox.
    assert!(s.insert_code_run(&run).await.is_err());
    assert!(
        s.insert_code_run(&new_run("run_2", "alice", "sb_none", RunStatus::Queued))
            .await
            .is_err()
    );
    assert!(
        s.insert_code_run(&new_run("run_3", "alice", "sb_b", RunStatus::Queued))
            .await
            .is_err()
    );
    assert_eq!(b.count_rows("code_runs").await, 1);
}

pub(crate) async fn update_code_run_never_overwrites_a_final_status<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb", "t", 1_000))
        .await
        .unwrap();
    s.insert_code_run(&new_run("run_1", "t", "sb", RunStatus::Queued))
        .await
        .unwrap();
    assert!(
        s.update_code_run("run_1", RunStatus::Running, r#"{"s":"running"}"#)
            .await
            .unwrap()
    );
    let row = s.get_code_run("t", "sb", "run_1").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.doc.as_str()),
        (RunStatus::Running, r#"{"s":"running"}"#)
    );
    // Running -> running again (e.g. new output in the doc) is fine.
    assert!(
        s.update_code_run("run_1", RunStatus::Running, r#"{"s":"running","n":1}"#)
            .await
            .unwrap()
    );
    assert!(
        s.update_code_run("run_1", RunStatus::Succeeded, r#"{"s":"done"}"#)
            .await
            .unwrap()
    );
    for status in [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Succeeded,
    ] {
        assert!(
            !s.update_code_run("run_1", status, r#"{"s":"late"}"#)
                .await
                .unwrap(),
            "{status:?}"
        );
    }
    let row = s.get_code_run("t", "sb", "run_1").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.doc.as_str()),
        (RunStatus::Succeeded, r#"{"s":"done"}"#)
    );
    // A run inserted final (e.g. rejected at once) is final too.
    s.insert_code_run(&new_run("run_2", "t", "sb", RunStatus::Cancelled))
        .await
        .unwrap();
    assert!(
        !s.update_code_run("run_2", RunStatus::Running, "{}")
            .await
            .unwrap()
    );
    assert!(
        !s.update_code_run("run_missing", RunStatus::Running, "{}")
            .await
            .unwrap()
    );
}

pub(crate) async fn unfinished_code_runs_of_one_sandbox_or_all<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_1", "t1", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_2", "t2", 1_000))
        .await
        .unwrap();
    for (id, sb, tenant, status) in [
        ("run_q1", "sb_1", "t1", RunStatus::Queued),
        ("run_ok", "sb_1", "t1", RunStatus::Succeeded),
        ("run_r2", "sb_2", "t2", RunStatus::Running),
        ("run_r1", "sb_1", "t1", RunStatus::Running),
        ("run_f2", "sb_2", "t2", RunStatus::Failed),
        ("run_c1", "sb_1", "t1", RunStatus::Cancelled),
    ] {
        s.insert_code_run(&new_run(id, tenant, sb, status))
            .await
            .unwrap();
    }
    assert_eq!(
        run_ids(&s.unfinished_code_runs(None).await.unwrap()),
        ["run_q1", "run_r2", "run_r1"]
    );
    let one = s.unfinished_code_runs(Some("sb_1")).await.unwrap();
    assert_eq!(run_ids(&one), ["run_q1", "run_r1"]);
    assert_eq!(one[0].status, RunStatus::Queued);
    assert_eq!(one[1].status, RunStatus::Running);
    assert_eq!(
        run_ids(&s.unfinished_code_runs(Some("sb_2")).await.unwrap()),
        ["run_r2"]
    );
    assert!(
        s.unfinished_code_runs(Some("sb_none"))
            .await
            .unwrap()
            .is_empty()
    );
    // It changes nothing itself.
    assert_eq!(s.unfinished_code_runs(None).await.unwrap().len(), 3);
    // Once the caller records the rewritten docs, they are gone from the list.
    for r in s.unfinished_code_runs(Some("sb_1")).await.unwrap() {
        assert!(
            s.update_code_run(&r.id, RunStatus::Failed, r#"{"error":"sandbox ended"}"#)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        run_ids(&s.unfinished_code_runs(None).await.unwrap()),
        ["run_r2"]
    );
}

pub(crate) async fn list_code_runs_pages_newest_first<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb", "t", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_x", "t", 1_000))
        .await
        .unwrap();
    for i in 0..7 {
        s.insert_code_run(&new_run(&format!("run_{i}"), "t", "sb", RunStatus::Queued))
            .await
            .unwrap();
        s.insert_code_run(&new_run(
            &format!("run_x{i}"),
            "t",
            "sb_x",
            RunStatus::Queued,
        ))
        .await
        .unwrap();
    }
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let rows = s.list_code_runs("t", "sb", cursor, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for w in rows.windows(2) {
            assert!(w[0].seq > w[1].seq);
        }
        cursor = rows.last().map(|r| r.seq);
        pages.push(run_ids(&rows).join(","));
    }
    assert_eq!(pages, ["run_6,run_5,run_4", "run_3,run_2,run_1", "run_0"]);
    assert!(
        s.list_code_runs("t", "sb", None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn artifacts_round_trip_isolation_and_listing<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_1", "alice", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_2", "alice", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_b", "bob", 1_000))
        .await
        .unwrap();
    let a1 = new_artifact("art_1", "alice", "sb_1", "run_1");
    let mut a2 = new_artifact("art_2", "alice", "sb_1", "run_2");
    a2.execution_count = None;
    a2.metadata = "{}".into();
    let a3 = new_artifact("art_3", "alice", "sb_1", "run_1");
    let a4 = new_artifact("art_4", "alice", "sb_2", "run_9");
    s.insert_artifacts(&[a1.clone(), a2.clone(), a3.clone()])
        .await
        .unwrap();
    s.insert_artifacts(std::slice::from_ref(&a4)).await.unwrap();
    s.insert_artifacts(&[]).await.unwrap();

    assert_eq!(
        s.get_artifact("alice", "art_1").await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(
        s.get_artifact_by_id("art_2").await.unwrap(),
        Some(a2.clone())
    );
    assert_eq!(
        s.list_artifacts("alice", "sb_1", None).await.unwrap(),
        [a1.clone(), a2.clone(), a3.clone()]
    );
    assert_eq!(
        artifact_ids(
            &s.list_artifacts("alice", "sb_1", Some("run_1"))
                .await
                .unwrap()
        ),
        ["art_1", "art_3"]
    );
    assert_eq!(s.list_artifacts("alice", "sb_2", None).await.unwrap(), [a4]);
    assert!(
        s.list_artifacts("alice", "sb_1", Some("run_9"))
            .await
            .unwrap()
            .is_empty()
    );

    // Another tenant sees nothing.
    assert!(s.get_artifact("bob", "art_1").await.unwrap().is_none());
    assert!(
        s.list_artifacts("bob", "sb_1", None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.list_artifacts("bob", "sb_1", Some("run_1"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.get_artifact("alice", "art_x").await.unwrap().is_none());
    assert!(s.get_artifact_by_id("art_x").await.unwrap().is_none());

    // All or none: a duplicate id in a batch inserts nothing of it.
    let fresh = new_artifact("art_5", "alice", "sb_1", "run_3");
    assert!(
        s.insert_artifacts(&[fresh.clone(), a1.clone()])
            .await
            .is_err()
    );
    assert!(s.get_artifact_by_id("art_5").await.unwrap().is_none());
    // An artifact of a missing or another tenant's sandbox is refused.
    assert!(
        s.insert_artifacts(&[new_artifact("art_6", "alice", "sb_b", "run_1")])
            .await
            .is_err()
    );
    assert!(
        s.insert_artifacts(&[new_artifact("art_7", "alice", "sb_none", "run_1")])
            .await
            .is_err()
    );
    assert_eq!(b.count_rows("artifacts").await, 4);
}

pub(crate) async fn delete_expired_artifacts_returns_their_ids<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_sandbox(&new_sandbox("sb_1", "t1", 1_000))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb_2", "t2", 1_000))
        .await
        .unwrap();
    let mut batch = Vec::new();
    for (id, tenant, sb, expires_at) in [
        ("art_a", "t1", "sb_1", 300),
        ("art_b", "t2", "sb_2", 100),
        ("art_c", "t1", "sb_1", 200),
        ("art_d", "t1", "sb_1", 900),
    ] {
        let mut a = new_artifact(id, tenant, sb, "run_1");
        a.expires_at = expires_at;
        batch.push(a);
    }
    s.insert_artifacts(&batch[..2]).await.unwrap();
    s.insert_artifacts(&batch[2..]).await.unwrap();

    assert!(s.delete_expired_artifacts(99).await.unwrap().is_empty());
    assert_eq!(s.delete_expired_artifacts(100).await.unwrap(), ["art_b"]);
    assert_eq!(
        s.delete_expired_artifacts(300).await.unwrap(),
        ["art_a", "art_c"]
    );
    assert!(s.delete_expired_artifacts(300).await.unwrap().is_empty());
    assert!(s.get_artifact_by_id("art_a").await.unwrap().is_none());
    assert_eq!(
        artifact_ids(&s.list_artifacts("t1", "sb_1", None).await.unwrap()),
        ["art_d"]
    );
    assert!(s.get_sandbox_by_id("sb_1").await.unwrap().is_some());
}

pub(crate) async fn purge_sandboxes_cascades_runs_and_artifacts<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    for (id, tenant) in [
        ("sb_old", "t1"),
        ("sb_recent", "t1"),
        ("sb_live", "t2"),
        ("sb_old2", "t2"),
    ] {
        s.insert_sandbox(&new_sandbox(id, tenant, 1_000))
            .await
            .unwrap();
    }
    assert!(s.end_sandbox("sb_old", 100, "deleted").await.unwrap());
    assert!(s.end_sandbox("sb_old2", 150, "expired").await.unwrap());
    assert!(s.end_sandbox("sb_recent", 500, "deleted").await.unwrap());
    for (sb, tenant) in [
        ("sb_old", "t1"),
        ("sb_recent", "t1"),
        ("sb_live", "t2"),
        ("sb_old2", "t2"),
    ] {
        let run = format!("run_{sb}");
        s.insert_code_run(&new_run(&run, tenant, sb, RunStatus::Succeeded))
            .await
            .unwrap();
        s.insert_artifacts(&[
            new_artifact(&format!("art_{sb}_1"), tenant, sb, &run),
            new_artifact(&format!("art_{sb}_2"), tenant, sb, &run),
        ])
        .await
        .unwrap();
    }

    assert!(
        s.purge_sandboxes(100).await.unwrap().is_empty(),
        "ended_at < before"
    );
    let purged = s.purge_sandboxes(200).await.unwrap();
    assert_eq!(
        purged,
        [
            "art_sb_old_1",
            "art_sb_old_2",
            "art_sb_old2_1",
            "art_sb_old2_2"
        ]
    );
    for (sb, tenant) in [("sb_old", "t1"), ("sb_old2", "t2")] {
        assert!(s.get_sandbox_by_id(sb).await.unwrap().is_none());
        assert!(
            s.list_code_runs(tenant, sb, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.list_artifacts(tenant, sb, None).await.unwrap().is_empty());
    }
    // The rows are really gone.
    assert_eq!(b.count_rows("sandboxes").await, 2);
    assert_eq!(b.count_rows("code_runs").await, 2);
    assert_eq!(b.count_rows("artifacts").await, 4);
    // Running sandboxes are never purged, whatever `before`.
    assert_eq!(
        s.purge_sandboxes(i64::MAX).await.unwrap(),
        ["art_sb_recent_1", "art_sb_recent_2"]
    );
    assert_eq!(
        s.list_artifacts("t2", "sb_live", None).await.unwrap().len(),
        2
    );
    assert_eq!(
        s.list_code_runs("t2", "sb_live", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.purge_sandboxes(i64::MAX).await.unwrap().is_empty());
}

/// Ids and filters come from request paths and bodies as they are: one with a NUL character
/// (`%00`) names nothing, and changes nothing.
pub(crate) async fn keys_with_a_nul_character_are_missing<B: Backend>() {
    let b = B::fresh().await;
    let s = b.store();
    s.insert_execution(&new_exec("e", "t", ExecStatus::Pending))
        .await
        .unwrap();
    s.insert_delivery(&new_delivery("msg", "e", "t", 10))
        .await
        .unwrap();
    s.insert_sandbox(&new_sandbox("sb", "t", 1_000))
        .await
        .unwrap();
    s.insert_code_run(&new_run("run", "t", "sb", RunStatus::Queued))
        .await
        .unwrap();
    s.insert_artifacts(&[new_artifact("art", "t", "sb", "run")])
        .await
        .unwrap();
    let f = finish(ExecStatus::Failed, 5, 100);
    for nul in ["e\0", "\0", "t\0x"] {
        assert!(s.get_execution("t", nul, 0).await.unwrap().is_none());
        assert!(s.get_execution(nul, "e", 0).await.unwrap().is_none());
        let session = ListFilter {
            session_id: Some(nul.into()),
            limit: 10,
            ..ListFilter::default()
        };
        assert!(
            s.list_executions("t", &session, 0)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            s.list_executions(nul, &all(10), 0)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!s.cancel_pending("t", nul, &f).await.unwrap());
        assert!(!s.finish_execution(nul, &f).await.unwrap());
        assert!(!s.delete_execution("t", nul).await.unwrap());
        assert!(s.claim_next_pending_of(nul, 1).await.unwrap().is_none());
        assert!(s.list_deliveries("t", nul).await.unwrap().is_empty());
        assert!(
            !s.record_attempt(
                "n1",
                nul,
                &attempt(1, Some(200), None),
                DeliveryState::Delivered,
                None,
            )
            .await
            .unwrap()
        );
        assert!(s.get_sandbox("t", nul).await.unwrap().is_none());
        assert!(s.get_sandbox_by_id(nul).await.unwrap().is_none());
        assert!(
            s.list_sandboxes(nul, &sandboxes(10))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!s.renew_sandbox("t", nul, 5_000).await.unwrap());
        assert!(!s.end_sandbox(nul, 5, "deleted").await.unwrap());
        assert!(s.get_code_run("t", "sb", nul).await.unwrap().is_none());
        assert!(s.get_code_run("t", nul, "run").await.unwrap().is_none());
        assert!(
            s.list_code_runs("t", nul, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !s.update_code_run(nul, RunStatus::Failed, "{}")
                .await
                .unwrap()
        );
        assert!(s.unfinished_code_runs(Some(nul)).await.unwrap().is_empty());
        assert!(s.get_artifact("t", nul).await.unwrap().is_none());
        assert!(s.get_artifact_by_id(nul).await.unwrap().is_none());
        assert!(s.list_artifacts("t", nul, None).await.unwrap().is_empty());
        assert!(
            s.list_artifacts("t", "sb", Some(nul))
                .await
                .unwrap()
                .is_empty()
        );
    }
    // Everything is as it was.
    assert_eq!(s.count_pending().await.unwrap(), 1);
    assert_eq!(
        s.list_deliveries("t", "e").await.unwrap()[0].attempts.len(),
        0
    );
    let sb = s.get_sandbox("t", "sb").await.unwrap().unwrap();
    assert_eq!((sb.status, sb.expires_at), (SandboxStatus::Running, 1_000));
    assert_eq!(s.unfinished_code_runs(None).await.unwrap().len(), 1);
    assert_eq!(s.list_artifacts("t", "sb", None).await.unwrap().len(), 1);
}
