//! Supervision of background tasks: none of them may die silently.

use std::{any::Any, future::Future, time::Duration};

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so stopping a supervisor stops its child.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the task `make` returns and, with an error log and `on_restart`,
/// starts a new one after `delay` whenever it panics or ends before
/// `finished()` says it should: a background task must not stop silently.
pub fn supervise<F, Fut>(
    name: &'static str,
    delay: Duration,
    finished: impl Fn() -> bool + Send + 'static,
    on_restart: impl Fn() + Send + 'static,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let mut task = AbortOnDrop(tokio::spawn(make()));
            let outcome = (&mut task.0).await;
            if finished() {
                return;
            }
            match outcome {
                Ok(()) => tracing::error!(task = name, "Background task ended; restarting it"),
                Err(error) if error.is_panic() => {
                    let panic = error.into_panic();
                    tracing::error!(
                        task = name,
                        error = panic_message(panic.as_ref()),
                        "Background task panicked; restarting it"
                    );
                }
                // Cancelled: only when the runtime shuts down.
                Err(_) => return,
            }
            on_restart();
            tokio::time::sleep(delay).await;
        }
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_ends_is_restarted_and_stops_with_its_supervisor() {
        struct SetOnDrop(Arc<AtomicUsize>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(1, Ordering::SeqCst);
            }
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let supervisor = {
            let (runs, dropped) = (runs.clone(), dropped.clone());
            supervise(
                "test",
                Duration::from_millis(1),
                || false,
                || {},
                move || {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let guard = SetOnDrop(dropped.clone());
                    async move {
                        match run {
                            0 => panic!("first run fails"),
                            1 => {}
                            _ => {
                                let _guard = guard;
                                std::future::pending::<()>().await
                            }
                        }
                    }
                },
            )
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The guards of the first two runs dropped when they ended; reset and
        // check the third, still running, stops with the supervisor.
        dropped.store(0, Ordering::SeqCst);
        supervisor.abort();
        let _ = supervisor.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the child outlived its supervisor"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
