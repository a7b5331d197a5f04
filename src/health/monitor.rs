//! Background health tasks: heartbeat expiry and active TCP probes. Neither
//! touches routing directly; transitions go through the control plane.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;

use crate::control::Controller;

/// Spawns the heartbeat-expiry loop and, when enabled, the probe loop.
pub fn spawn(ctl: Arc<Controller>, heartbeat_ttl: Duration) {
    // Check often enough that expiry lands within a quarter TTL of its due time.
    let tick = (heartbeat_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let expiry = ctl.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let transitions = expiry.health.expire(std::time::Instant::now());
            expiry.on_transitions(&transitions);
        }
    });
    if ctl.probe.enabled {
        tokio::spawn(probe_loop(ctl));
    }
}

async fn probe_loop(ctl: Arc<Controller>) {
    let cfg = ctl.probe;
    let mut interval = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    loop {
        interval.tick().await;
        let view = ctl.view();
        let targets: Vec<(String, String)> = view
            .nodes
            .iter()
            .filter_map(|n| {
                let addr = if n.spec.intranet.tcp_addr.is_empty() {
                    &n.spec.external.tcp_addr
                } else {
                    &n.spec.intranet.tcp_addr
                };
                (!addr.is_empty()).then(|| (n.spec.id.clone(), addr.clone()))
            })
            .collect();
        // All probes of a round run concurrently; a slow node costs at most
        // `timeout` and never delays the others or routing.
        let probes = targets.into_iter().map(|(id, addr)| async move {
            let result = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
            };
            (id, result)
        });
        let results = futures_join_all(probes).await;
        let transitions: Vec<_> = results
            .into_iter()
            .filter_map(|(id, result)| ctl.health.probe_result(&id, result, &cfg))
            .collect();
        ctl.on_transitions(&transitions);
    }
}

/// Runs futures concurrently on the current task and collects their outputs.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        if let Ok(v) = result {
            out.push(v);
        }
    }
    out
}
