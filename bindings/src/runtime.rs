//! The one process-wide tokio runtime every exported async function runs on.
//!
//! A phone needs few threads: two workers (the proxy's work is I/O, and the
//! crypto per event is small), a 1 MiB stack instead of tokio's 2 MiB, and at
//! most four blocking threads (relay host names are resolved on them). The
//! runtime is created on first use and lives until the process ends; idle, its
//! threads sleep in the OS (epoll/kqueue) and use no CPU.
//!
//! Exported `async fn`s are polled by the foreign executor (Kotlin
//! coroutines, Swift tasks), which is not a tokio thread. Each one therefore
//! hands its work to this runtime with [`run`] and awaits the task's handle,
//! which works from any executor. (UniFFI's `async_runtime = "tokio"` would
//! instead run the future under `async-compat`, which starts a second,
//! private runtime the first time it is polled outside tokio.)

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use once_cell::sync::Lazy;
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::error::NwsError;

/// Worker threads of the runtime.
const WORKER_THREADS: usize = 2;
/// Stack size of each runtime thread, in bytes.
const THREAD_STACK: usize = 1024 * 1024;
/// Most threads for blocking work (DNS lookups of relay hosts).
const MAX_BLOCKING_THREADS: usize = 4;

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    crate::listener::install();
    Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_stack_size(THREAD_STACK)
        .thread_keep_alive(Duration::from_secs(10))
        .thread_name("nws-rt")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
});

/// The runtime, created on first use.
///
/// # Errors
///
/// [`NwsError::Internal`] if the OS refused to create its threads.
pub(crate) fn runtime() -> Result<&'static Runtime, NwsError> {
    RUNTIME.as_ref().map_err(|e| NwsError::internal(e.clone()))
}

/// Tasks started by [`run`] that have not ended yet (finished, failed or
/// aborted).
static ACTIVE_TASKS: AtomicUsize = AtomicUsize::new(0);

/// How many tasks of exported calls are still running: for tests and
/// diagnostics (a cancelled call must leave none behind).
pub(crate) fn active_tasks() -> usize {
    ACTIVE_TASKS.load(Ordering::SeqCst)
}

/// Counts one task in [`ACTIVE_TASKS`] until dropped (the task's future is
/// dropped when it completes or is aborted).
struct Counted;

impl Counted {
    fn new() -> Self {
        ACTIVE_TASKS.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        ACTIVE_TASKS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Aborts the task when the caller stops waiting for it: a Kotlin coroutine
/// cancelled (`withTimeout`, a cancelled scope) or a Swift `Task` cancelled
/// drops the future of the exported call, and the Rust work stops with it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` as a task on the runtime and waits for its result, from any
/// executor. A panic inside the task is caught by tokio and returned as
/// [`NwsError::Internal`], so it never unwinds into foreign code. If the
/// caller stops waiting (its future is dropped: cancellation), the task is
/// aborted at its next await point.
pub(crate) async fn run<F, T>(fut: F) -> Result<T, NwsError>
where
    F: Future<Output = Result<T, NwsError>> + Send + 'static,
    T: Send + 'static,
{
    let counted = Counted::new();
    let mut handle = AbortOnDrop(runtime()?.spawn(async move {
        let _counted = counted;
        fut.await
    }));
    outcome((&mut handle.0).await)
}

/// Like [`run`], but the task runs to its end even if the caller stops
/// waiting (for work that must not stop half-way, such as starting the
/// proxy; the caller then undoes it, see `NwsProxy::start`).
pub(crate) async fn run_to_end<F, T>(fut: F) -> Result<T, NwsError>
where
    F: Future<Output = Result<T, NwsError>> + Send + 'static,
    T: Send + 'static,
{
    let counted = Counted::new();
    let handle = runtime()?.spawn(async move {
        let _counted = counted;
        fut.await
    });
    outcome(handle.await)
}

/// A task's result, its panic as [`NwsError::Internal`].
fn outcome<T>(joined: Result<Result<T, NwsError>, tokio::task::JoinError>) -> Result<T, NwsError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(NwsError::internal(format!(
            "panic in NWS: {}",
            panic_message(e.into_panic())
        ))),
        Err(e) => Err(NwsError::stopped(format!("task cancelled: {e}"))),
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_task_becomes_an_internal_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result: Result<(), NwsError> = rt.block_on(run(async { panic!("boom") }));
        assert_eq!(
            result,
            Err(NwsError::Internal {
                detail: "panic in NWS: boom".into()
            })
        );
    }

    #[test]
    fn a_dropped_call_aborts_its_task() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = SetOnDrop(ended.clone());
        rt.block_on(async {
            let call = run(async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            });
            // The caller gives up after 50 ms (a cancelled coroutine).
            assert!(tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err());
        });
        // The task is aborted on the shared runtime: its future is dropped.
        for _ in 0..200 {
            if ended.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ended.load(Ordering::SeqCst), "the task still runs");
    }

    #[test]
    fn run_returns_the_task_result_to_a_foreign_executor() {
        // A current-thread runtime stands in for the foreign executor: the
        // task itself runs on the shared runtime's threads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let name = rt
            .block_on(run(async {
                Ok(std::thread::current().name().unwrap_or("").to_string())
            }))
            .unwrap();
        assert_eq!(name, "nws-rt");
    }
}
