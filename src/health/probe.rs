//! Active TCP probes: one connection attempt per node per round, at most
//! `concurrency` at a time (so a large fleet never exhausts file
//! descriptors), and verdicts that flip only after several results in a row.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};

use crate::{config::ProbeConfig, store::ProbeVerdict};

/// A node to probe, as it was when the round started.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub incarnation: i64,
    pub addr: String,
}

/// Probes every target once, at most `concurrency` at a time; each attempt
/// is bounded by `timeout`.
pub async fn probe_round(
    targets: Vec<Target>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<(Target, Result<(), String>)> {
    run_bounded(targets, concurrency, move |target| async move {
        let result = match tokio::time::timeout(timeout, TcpStream::connect(&target.addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
        };
        (target, result)
    })
    .await
}

/// Runs `f` over every item, at most `concurrency` at a time.
pub async fn run_bounded<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Vec<Fut::Output>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for item in items {
        // Take the permit before spawning: never more than `concurrency`
        // attempts (and sockets) exist at once.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let fut = f(item);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(v) = joined {
            out.push(v);
        }
    }
    out
}

#[derive(Debug, Default, Clone)]
struct Run {
    failures: u32,
    successes: u32,
}

/// Consecutive results per node incarnation, kept by the prober; turns them
/// into verdict changes (`unhealthy_after` failures or `healthy_after`
/// successes in a row; the very first success of a node with no verdict
/// counts at once).
#[derive(Debug, Default)]
pub struct Tracker {
    runs: HashMap<(String, i64), Run>,
}

impl Tracker {
    /// Records one result; returns the new verdict when it differs from the
    /// one on record.
    pub fn record(
        &mut self,
        target: &Target,
        result: Result<(), String>,
        on_record: Option<bool>,
        cfg: &ProbeConfig,
    ) -> Option<ProbeVerdict> {
        let run = self
            .runs
            .entry((target.node.clone(), target.incarnation))
            .or_default();
        let verdict = match result {
            Ok(()) => {
                run.failures = 0;
                run.successes = run.successes.saturating_add(1);
                (run.successes >= cfg.healthy_after || on_record.is_none())
                    .then(|| (false, "tcp probe succeeded".to_owned()))
            }
            Err(error) => {
                run.successes = 0;
                run.failures = run.failures.saturating_add(1);
                (run.failures >= cfg.unhealthy_after).then(|| {
                    (
                        true,
                        format!("tcp probe failed {} times in a row: {error}", run.failures),
                    )
                })
            }
        };
        let (down, reason) = verdict?;
        (on_record != Some(down)).then(|| ProbeVerdict {
            node: target.node.clone(),
            incarnation: target.incarnation,
            down,
            reason,
        })
    }

    /// Forgets nodes that are no longer probed.
    pub fn retain(&mut self, keep: impl Fn(&str, i64) -> bool) {
        self.runs.retain(|(id, inc), _| keep(id, *inc));
    }

    pub fn clear(&mut self) {
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_need_consecutive_results() {
        let cfg = ProbeConfig {
            unhealthy_after: 2,
            healthy_after: 2,
            ..ProbeConfig::default()
        };
        let t = Target {
            node: "a".into(),
            incarnation: 1,
            addr: String::new(),
        };
        let mut tr = Tracker::default();
        let v = tr.record(&t, Ok(()), None, &cfg).unwrap();
        assert!(!v.down);
        let mut verdict = Some(false);
        assert!(tr
            .record(&t, Err("refused".into()), verdict, &cfg)
            .is_none());
        assert!(tr.record(&t, Ok(()), verdict, &cfg).is_none());
        assert!(tr
            .record(&t, Err("refused".into()), verdict, &cfg)
            .is_none());
        let v = tr.record(&t, Err("refused".into()), verdict, &cfg).unwrap();
        assert!(v.down && v.reason.contains("2 times"), "{v:?}");
        verdict = Some(true);
        assert!(tr.record(&t, Ok(()), verdict, &cfg).is_none());
        assert!(!tr.record(&t, Ok(()), verdict, &cfg).unwrap().down);
    }

    #[tokio::test]
    async fn a_round_never_runs_more_attempts_than_its_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (now.clone(), peak.clone());
        let done = run_bounded((0..50).collect(), 4, move |i: u32| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(c, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                i
            }
        })
        .await;
        assert_eq!(done.len(), 50);
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failure_with_its_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let target = Target {
            node: "n".into(),
            incarnation: 1,
            addr,
        };
        let results = probe_round(vec![target], Duration::from_millis(500), 4).await;
        assert!(results[0].1.as_ref().unwrap_err().contains("refused"));
    }
}
