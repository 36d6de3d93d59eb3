//! Running a store call from async code: every store method blocks (SQLite I/O, and a wait of
//! up to the busy timeout while the admin CLI writes), so async callers hand it to a blocking
//! thread instead of stalling the runtime's threads and every connection on them.

use std::sync::Arc;

use thiserror::Error;

use super::Store;

/// The blocking thread running a store call ended without an answer: the call panicked, or
/// the runtime is shutting down.
#[derive(Debug, Error)]
#[error("store task failed: {0}")]
pub struct TaskFailed(#[from] tokio::task::JoinError);

/// Runs `f` on the store on a blocking thread and returns what it returned. A task that
/// failed is logged here, so callers only decide what to answer instead.
pub async fn with_store<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, TaskFailed> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            let failed = TaskFailed(e);
            tracing::error!("{failed}");
            failed
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_runs_on_the_store_and_a_panic_is_an_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(&dir.path().join("relay.db"))?);
        store.add_tenant("acme")?;
        let tenants = with_store(&store, |s| s.tenants()).await??;
        assert_eq!(tenants.len(), 1);
        let failed = with_store(&store, |_: &Store| -> u32 {
            panic!("a store call that panics")
        })
        .await;
        assert!(failed.is_err());
        Ok(())
    }
}
