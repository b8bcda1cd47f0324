//! The expiry reaper: the async shell that ticks the node's expiry.

use std::sync::Arc;
use std::time::Duration;

use livestock_core::limits::EXPIRY_TICK_MS;
use tokio::sync::watch;

use crate::node::Node;

/// Expires due holds every tick until `stop` changes: a hold's units are back in `available`
/// at most `EXPIRY_TICK_MS` (plus scheduling delay) after its `expires_at`.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPIRY_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { node.expire_due(); }
            _ = stop.changed() => return,
        }
    }
}
