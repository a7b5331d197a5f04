//! The control plane's background tasks, each one more input of the one
//! rebuild path:
//! - the **change feed**: `LISTEN` as a wake-up, a periodic check of the
//!   change counter that catches what a lost notification missed, a full
//!   reload after every reconnect, and the health read-back;
//! - the **judge**: on the one replica holding the leader lock, heartbeat
//!   expiry on the store's clock, and TCP probes;
//! - the **registry**: this replica reports itself every second and reads
//!   the others.
//!
//! Every task is supervised: a panic is logged, counted and the task
//! restarted; none of them dies silently.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::Controller;
use crate::{
    health::probe::{probe_round, Target, Tracker},
    store::{Listener, Signal},
};

/// How often health records are read back from a shared store; a
/// notification (a node came back, a node expired) reads them at once.
const HEALTH_POLL: Duration = Duration::from_millis(500);
/// A full re-read of health records, dropping any that a race left behind.
const HEALTH_FULL: Duration = Duration::from_secs(60);
/// Probe verdicts stored per store call.
const VERDICTS_PER_CALL: usize = 100;
/// Replicas report themselves this often.
const REPORT: Duration = Duration::from_secs(1);

/// Starts every background task; they stop when `Controller::stop` is called.
pub fn spawn_all(ctl: &Arc<Controller>) -> Vec<JoinHandle<()>> {
    vec![
        supervise(ctl, "change_feed", |ctl| Box::pin(change_feed(ctl))),
        supervise(ctl, "expiry", |ctl| Box::pin(expiry(ctl))),
        supervise(ctl, "probes", |ctl| Box::pin(probes(ctl))),
        supervise(ctl, "registry", |ctl| Box::pin(registry(ctl))),
        supervise(ctl, "full_set", |ctl| Box::pin(full_set(ctl))),
    ]
}

type TaskFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `task` until the controller stops, restarting it after a panic.
fn supervise(
    ctl: &Arc<Controller>,
    name: &'static str,
    task: fn(Arc<Controller>) -> TaskFuture,
) -> JoinHandle<()> {
    let restarts = ctl.metrics.task_restarts.with_label_values(&[name]);
    let stop = ctl.stop.subscribe();
    let ctl = ctl.clone();
    crate::supervise::supervise(
        name,
        Duration::from_millis(200),
        move || *stop.borrow(),
        move || restarts.inc(),
        move || task(ctl.clone()),
    )
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Forwards a listener's signals to a channel (so waiting on them can be
/// cancelled at any time without losing part of a message), then reports
/// its end.
fn spawn_listener(mut listener: Box<dyn Listener>) -> mpsc::Receiver<Option<Signal>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends (closing the connection) as soon as the feed drops the
            // receiver, even while waiting on a connection that went silent.
            let received = tokio::select! {
                received = listener.recv() => received,
                _ = tx.closed() => return,
            };
            match received {
                Ok(signal) => {
                    if tx.send(Some(signal)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Change notifications lost; reconnecting");
                    let _ = tx.send(None).await;
                    return;
                }
            }
        }
    });
    rx
}

async fn recv_signal(rx: &mut Option<mpsc::Receiver<Option<Signal>>>) -> Option<Signal> {
    match rx {
        Some(rx) => rx.recv().await.flatten(),
        None => std::future::pending().await,
    }
}

async fn change_feed(ctl: Arc<Controller>) {
    let store = ctl.store().clone();
    let mut signals: Option<mpsc::Receiver<Option<Signal>>> = None;
    let mut listening = false;
    let mut poll = interval(ctl.poll_interval);
    let mut health_tick = interval(HEALTH_POLL);
    let mut health_cursor = 0i64;
    let mut last_full_health = Instant::now();
    let mut need_full = false;
    let mut health_due = true;
    let mut last_health = Instant::now() - HEALTH_POLL;
    loop {
        if !listening && ctl.store_up() {
            match ctl.store_call(store.listen()).await {
                Ok(Some(listener)) => {
                    signals = Some(spawn_listener(listener));
                    listening = true;
                    // Whatever was sent while nobody listened is lost.
                    need_full = true;
                }
                Ok(None) => listening = true,
                Err(_) => {}
            }
        }
        if need_full && ctl.store_up() && ctl.resync().await.is_ok() {
            need_full = false;
            health_cursor = 0;
            health_due = true;
            ctl.retry_overrides_save().await;
        }
        if health_due && last_health.elapsed() >= Duration::from_millis(100) {
            health_due = false;
            last_health = Instant::now();
            let cursor = if last_full_health.elapsed() > HEALTH_FULL {
                0
            } else {
                health_cursor
            };
            if let Ok(batch) = ctl.store_call(store.health_since(cursor)).await {
                if batch.complete {
                    last_full_health = Instant::now();
                }
                health_cursor = batch.cursor;
                ctl.apply_health(batch.records, batch.complete).await;
            }
        }
        // Health written by other replicas is read back every 500 ms, with
        // or without a listener.
        let shared = store.kind() != "sqlite";
        tokio::select! {
            _ = ctl.stopped() => return,
            signal = recv_signal(&mut signals) => match signal {
                Some(Signal::Changes) => {
                    // One catch-up serves every notification already queued.
                    if let Some(rx) = signals.as_mut() {
                        while let Ok(Some(next)) = rx.try_recv() {
                            match next {
                                Signal::Health => health_due = true,
                                Signal::Reconnected => need_full = true,
                                Signal::Changes => {}
                            }
                        }
                    }
                    let _ = ctl.catch_up().await;
                }
                Some(Signal::Health) => health_due = true,
                Some(Signal::Reconnected) => need_full = true,
                None => {
                    signals = None;
                    listening = false;
                }
            },
            _ = ctl.feed_signal().notified() => { let _ = ctl.catch_up().await; }
            _ = poll.tick() => {
                let was_up = ctl.store_up();
                // Bypass the fast failure of writes: this is what notices
                // that the store is back.
                match tokio::time::timeout(store.op_timeout(), store.head()).await {
                    Ok(Ok(head)) => {
                        if ctl.mark_store(true) || !was_up {
                            need_full = true;
                        }
                        if head != ctl.applied() {
                            let _ = ctl.catch_up().await;
                        }
                    }
                    _ => {
                        ctl.mark_store(false);
                        // A connection cut without a reset leaves the
                        // listener waiting forever: start a new one.
                        signals = None;
                        listening = false;
                    }
                }
            }
            _ = health_tick.tick(), if shared => health_due = true,
        }
        if !shared && last_full_health.elapsed() > HEALTH_FULL {
            health_due = true;
        }
    }
}

/// How often the judge looks at heartbeat expiry.
fn expiry_tick(ctl: &Controller) -> Duration {
    (ctl.health.ttl() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Heartbeat expiry, judged by the one replica holding the leader lock.
async fn expiry(ctl: Arc<Controller>) {
    let store = ctl.store().clone();
    let mut tick = interval(expiry_tick(&ctl));
    let mut leading = false;
    loop {
        tokio::select! {
            _ = ctl.stopped() => return,
            _ = tick.tick() => {}
        }
        let now_leading = ctl.store_up() && ctl.store_call(store.lead()).await.unwrap_or(false);
        if now_leading != leading {
            leading = now_leading;
            ctl.metrics.leader.set(i64::from(leading));
            if leading {
                tracing::info!("This replica now judges heartbeat expiry and runs probes");
            } else {
                tracing::info!("This replica no longer judges heartbeat expiry");
            }
        }
        if !leading {
            continue;
        }
        if let Ok(records) = ctl.store_call(store.expire(ctl.health.ttl())).await {
            if !records.is_empty() {
                ctl.apply_health(records, false).await;
            }
        }
    }
}

/// TCP probes, run by the one replica holding the leader lock; verdicts are
/// stored so every replica routes on them.
async fn probes(ctl: Arc<Controller>) {
    if !ctl.probe.enabled {
        return ctl.stopped().await;
    }
    let store = ctl.store().clone();
    let cfg = ctl.probe;
    let mut tick = interval(Duration::from_millis(cfg.interval_ms));
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut tracker = Tracker::default();
    loop {
        tokio::select! {
            _ = ctl.stopped() => return,
            _ = tick.tick() => {}
        }
        if !ctl.store_up() || !ctl.store_call(store.lead()).await.unwrap_or(false) {
            tracker.clear();
            continue;
        }
        let snap = ctl.current();
        let targets: Vec<Target> = snap
            .view
            .nodes
            .iter()
            .filter_map(|n| {
                let addr = if n.spec.intranet.tcp_addr.is_empty() {
                    &n.spec.external.tcp_addr
                } else {
                    &n.spec.intranet.tcp_addr
                };
                (!addr.is_empty()).then(|| Target {
                    node: n.spec.id.clone(),
                    incarnation: n.incarnation(),
                    addr: addr.clone(),
                })
            })
            .collect();
        drop(snap);
        let alive: std::collections::HashSet<(String, i64)> = targets
            .iter()
            .map(|t| (t.node.clone(), t.incarnation))
            .collect();
        tracker.retain(|id, inc| alive.contains(&(id.to_owned(), inc)));
        let results = tokio::select! {
            _ = ctl.stopped() => return,
            results = probe_round(targets, timeout, cfg.concurrency) => results,
        };
        let verdicts: Vec<_> = results
            .into_iter()
            .filter_map(|(target, result)| {
                let on_record = ctl.health.probe_down(&target.node, target.incarnation);
                tracker.record(&target, result, on_record, &cfg)
            })
            .collect();
        // Stored in bounded chunks, each only while this replica still
        // holds the lock (a round over many nodes takes a while).
        for chunk in verdicts.chunks(VERDICTS_PER_CALL) {
            if !ctl.store_call(store.lead()).await.unwrap_or(false) {
                tracker.clear();
                break;
            }
            match ctl.store_call(store.set_probe_verdicts(chunk)).await {
                Ok(records) => ctl.apply_health(records, false).await,
                Err(_) => break,
            }
        }
    }
}

/// The full set of a kind that uses load (`bounded`), re-evaluated by the
/// one replica holding the leader lock and stored, so every replica routes
/// on the same set. An evaluation runs once `health.full_eval_interval_ms`
/// has passed since the last one, or at once when the active strategy
/// (kind or params) changed: its rule changed, which is no flap. A replica
/// that has just become the judge waits one period first, so a handover
/// does not evaluate twice in quick succession.
async fn full_set(ctl: Arc<Controller>) {
    let store = ctl.store().clone();
    let period = ctl.full_eval_interval;
    let mut tick = interval((period / 5).clamp(Duration::from_millis(20), Duration::from_secs(1)));
    let mut leading = false;
    let mut last = Instant::now();
    let mut rule = None;
    loop {
        tokio::select! {
            _ = ctl.stopped() => return,
            _ = tick.tick() => {}
        }
        if !ctl.store_up() || !ctl.store_call(store.lead()).await.unwrap_or(false) {
            leading = false;
            continue;
        }
        let strategy = ctl.current().table.strategy().clone();
        let now_rule = Some((strategy.kind, strategy.params));
        if !leading {
            leading = true;
            last = Instant::now();
            rule = now_rule;
            continue;
        }
        if last.elapsed() < period && rule == now_rule {
            continue;
        }
        last = Instant::now();
        rule = now_rule;
        let marks = ctl.evaluate_full();
        if marks.is_empty() {
            continue;
        }
        // One write (one revision change on every replica, never a half
        // applied set), and only while this replica still judges.
        if !ctl.store_call(store.lead()).await.unwrap_or(false) {
            leading = false;
            continue;
        }
        if let Ok(records) = ctl.store_call(store.set_full(&marks)).await {
            ctl.apply_health(records, false).await;
        }
    }
}

/// Reports this replica and reads the others, every second.
async fn registry(ctl: Arc<Controller>) {
    let store = ctl.store().clone();
    let mut tick = interval(REPORT);
    loop {
        tokio::select! {
            _ = ctl.stopped() => return,
            _ = tick.tick() => {}
        }
        if !ctl.store_up() {
            continue;
        }
        if ctl
            .store_call(store.report_replica(&ctl.me_info()))
            .await
            .is_ok()
        {
            if let Ok(replicas) = ctl.store_call(store.replicas()).await {
                ctl.set_replicas(replicas);
            }
        }
    }
}
