//! The server streams: `WatchSweep` and `WatchRun` follow a sweep or a run as it
//! changes, `ExportRuns` pages through a query. Each waits between two reads in
//! `wait_for_change`, and a watched run has one reader whose deltas every watcher of
//! the run shares (`Feeds`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ladder_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

use ladder_query::Cursor;
use ladder_types::RunStatus;

use crate::convert;
use crate::error::CoordinatorError;
use crate::reads::{RunQuery, SweepView};
use crate::service::{ServiceHandle, WatchSlot};
use crate::store::PointKey;

/// Runs per internal page of `ExportRuns`.
pub(crate) const EXPORT_PAGE: usize = 500;
/// Most log lines one `WatchRun` message carries when catching up.
pub(crate) const WATCH_BACKLOG_LINES: usize = 10_000;
/// Most points and bytes of points in one `WatchRun` message after the first: every
/// watcher holds a few such messages, so they stay small.
const WATCH_POINTS_PER_MESSAGE: usize = ladder_limits::MAX_WATCH_MESSAGE_POINTS;
const WATCH_BYTES_PER_MESSAGE: usize = ladder_limits::MAX_WATCH_MESSAGE_BYTES;

/// Feeds a `WatchSweep` stream: the sweep now, then again after each change of it (a
/// burst of changes let settle for 100 ms), until it ends or the client goes away.
pub(crate) fn spawn_sweep_watch(
    shared: Arc<ServiceHandle>,
    sweep_id: String,
    first: SweepView,
    mut changes: broadcast::Receiver<String>,
    tx: Sender<pb::WatchSweepResponse>,
    slot: WatchSlot,
) {
    tokio::spawn(async move {
        let _slot = slot;
        let mut snapshot = first;
        loop {
            let ended = snapshot.ended();
            if tx
                .send(Ok(pb::WatchSweepResponse {
                    sweep: Some(convert::sweep_to_pb(&snapshot, true)),
                }))
                .await
                .is_err()
                || ended
            {
                return;
            }
            // Wait for a change of this sweep (or the client to go away, which frees
            // its watch slot), then let a burst of changes settle.
            tokio::select! {
                _ = tx.closed() => return,
                changed = wait_for_change(&mut changes, &sweep_id, None) => {
                    if !changed {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = sweep_id.clone();
            snapshot = match shared.read(move |q| q.sweep(&id)).await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
        }
    });
}

/// What a `WatchRun` stream has already sent.
#[derive(Default)]
struct WatchState {
    attempt: u32,
    points: u64,
    /// The last point sent (or skipped): the next message starts after it.
    after: Option<PointKey>,
    /// More points were already stored than the last message carried.
    behind: bool,
    lines: u64,
    status: Option<RunStatus>,
}

impl std::fmt::Debug for WatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "attempt {} points {} lines {}",
            self.attempt, self.points, self.lines
        )
    }
}

type Sender<T> = mpsc::Sender<Result<T, tonic::Status>>;

/// What one run's feed publishes after a change: the points and log lines of the
/// current attempt that were stored since its previous delta, and the run's status.
/// Read once per change for every watcher of the run.
#[derive(Debug)]
pub(crate) struct FeedDelta {
    attempt: u32,
    /// The key of the last point before this delta's first (None: the attempt's start)
    /// and of its last point; the points in between, in order.
    from: Option<PointKey>,
    to: Option<PointKey>,
    /// The points, encoded once for every watcher's message ([`pb::encode_points`]).
    points: prost::bytes::Bytes,
    point_count: u64,
    /// The attempt's log line count after this delta; `lines` are its last lines.
    lines_to: u64,
    lines: Vec<pb::LogLine>,
    status: RunStatus,
}

/// The feeds of watched runs: one reader per run, however many watch it.
pub(crate) type Feeds = std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<FeedDelta>>>>;

/// Deltas a feed keeps for slow watchers; one that falls further behind reads what it
/// missed from the store itself.
const FEED_CAPACITY: usize = 64;

/// A receiver of `run_id`'s feed, starting the feed's reader if the run has none.
fn subscribe(
    shared: &Arc<ServiceHandle>,
    run_id: &str,
    sweep_id: &str,
) -> broadcast::Receiver<Arc<FeedDelta>> {
    let mut feeds = shared.feeds.lock().expect("feeds");
    if let Some(sender) = feeds.get(run_id) {
        return sender.subscribe();
    }
    let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
    feeds.insert(run_id.to_string(), sender.clone());
    drop(feeds);
    tokio::spawn(run_feed(
        shared.clone(),
        run_id.to_string(),
        sweep_id.to_string(),
        sender,
    ));
    receiver
}

/// A watch state that has seen everything stored of the run's current attempt.
async fn everything_seen(
    shared: &ServiceHandle,
    run_id: &str,
) -> Result<WatchState, CoordinatorError> {
    let id = run_id.to_string();
    shared
        .read(move |q| {
            let mut state = WatchState::default();
            q.watch_skip(&id, &mut state)?;
            Ok(state)
        })
        .await
}

/// Ends `run_id`'s feed if no watcher listens to `sender` (checked under the lock a new
/// watcher subscribes under). True when it ended.
fn unwatched(
    shared: &ServiceHandle,
    run_id: &str,
    sender: &broadcast::Sender<Arc<FeedDelta>>,
) -> bool {
    let mut feeds = shared.feeds.lock().expect("feeds");
    if sender.receiver_count() > 0 {
        return false;
    }
    feeds.remove(run_id);
    true
}

/// Waits for a change of `sweep_id` (a lagging receiver counts as one), or until
/// `within` has passed when given. False when the coordinator stops: every stream that
/// follows a sweep or a run waits here between two reads.
pub(crate) async fn wait_for_change(
    changes: &mut broadcast::Receiver<String>,
    sweep_id: &str,
    within: Option<Duration>,
) -> bool {
    let change = async {
        loop {
            match changes.recv().await {
                Ok(changed) if changed == sweep_id => return true,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    };
    match within {
        Some(within) => !matches!(tokio::time::timeout(within, change).await, Ok(false)),
        None => change.await,
    }
}

/// The reader of one run's feed: after every change of the run's sweep it reads what
/// the run stored since its previous delta and publishes it, until the run ends or no
/// one watches it any more.
async fn run_feed(
    shared: Arc<ServiceHandle>,
    run_id: String,
    sweep_id: String,
    sender: broadcast::Sender<Arc<FeedDelta>>,
) {
    let mut changes = shared.changes.subscribe();
    // The feed starts at what is stored now: watchers read what came before themselves.
    let mut seen = everything_seen(&shared, &run_id).await.unwrap_or_default();
    loop {
        if !seen.behind
            && !wait_for_change(&mut changes, &sweep_id, Some(Duration::from_secs(2))).await
        {
            break;
        }
        let id = run_id.clone();
        let mut state = std::mem::take(&mut seen);
        let before = (state.attempt, state.after);
        let result = shared
            .read(move |q| {
                let delta = q.run_delta(&id, &mut state, false)?;
                Ok((delta, state))
            })
            .await;
        let Ok(((status, message), state)) = result else {
            break;
        };
        seen = state;
        let listened = match message {
            Some(message) => {
                let from = if before.0 == message.attempt {
                    before.1
                } else {
                    None
                };
                let delta = FeedDelta {
                    attempt: message.attempt,
                    from,
                    to: seen.after,
                    points: pb::encode_points(&message.points),
                    point_count: message.points.len() as u64,
                    lines_to: seen.lines,
                    lines: message.lines,
                    status,
                };
                sender.send(Arc::new(delta)).is_ok()
            }
            None => sender.receiver_count() > 0,
        };
        // No one listens: stop, unless someone subscribed meanwhile.
        if !listened && !seen.behind && unwatched(&shared, &run_id, &sender) {
            return;
        }
        if status.is_terminal() {
            break;
        }
    }
    let mut feeds = shared.feeds.lock().expect("feeds");
    if feeds.get(&run_id).is_some_and(|s| s.same_channel(&sender)) {
        feeds.remove(&run_id);
    }
}

/// Feeds a `WatchRun` stream: the run's card view now, then the deltas of the run's
/// feed (shared by every watcher of the run), reading from the store itself only what
/// it missed (it joined between two deltas, or fell behind), until the run ends.
pub(crate) fn spawn_watch(
    shared: Arc<ServiceHandle>,
    run_id: String,
    only_new: bool,
    tx: Sender<pb::WatchRunResponse>,
    slot: crate::service::WatchSlot,
) {
    tokio::spawn(async move {
        let _slot = slot;
        let sweep_id = {
            let id = run_id.clone();
            match shared.read(move |q| q.run_sweep(&id)).await {
                Ok(sweep_id) => sweep_id,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            }
        };
        // Subscribed before the first read: no delta published after it is missed.
        let mut feed = subscribe(&shared, &run_id, &sweep_id);
        let mut seen = WatchState::default();
        if only_new {
            if let Ok(state) = everything_seen(&shared, &run_id).await {
                seen = state;
                seen.status = None;
            }
        }
        // Read from the store until caught up, then follow the feed.
        let mut own_read = true;
        let mut feeds_closed = 0u32;
        loop {
            if own_read {
                // Watchers' own reads (the first builds the attempt's card from the whole
                // series) take turns, so that however many watch, other requests' reads
                // are not queued behind theirs.
                let _permit = shared.card_reads.acquire().await.expect("never closed");
                let id = run_id.clone();
                let mut state = std::mem::take(&mut seen);
                let result = shared
                    .read(move |q| {
                        let delta = q.run_delta(&id, &mut state, true)?;
                        Ok((delta, state))
                    })
                    .await;
                let ((status, message), state) = match result {
                    Ok(answer) => answer,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                seen = state;
                if let Some(message) = message {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if status.is_terminal() {
                    return;
                }
                own_read = seen.behind;
                continue;
            }
            // The client going away ends the watch (and frees its slot) even while
            // the run is quiet.
            let received = tokio::select! {
                _ = tx.closed() => return,
                received = feed.recv() => received,
            };
            let delta = match received {
                Ok(delta) => delta,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    own_read = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The feed ended: the run ended (the read says so and the watch
                    // ends), or its reader failed. A new feed follows a run that goes
                    // on, once; a second feed that ends without a delta ends the watch.
                    if tx.is_closed() || feeds_closed > 0 {
                        let _ = tx
                            .send(Err(tonic::Status::unavailable(
                                "the run's changes cannot be read; watch it again",
                            )))
                            .await;
                        return;
                    }
                    feeds_closed += 1;
                    feed = subscribe(&shared, &run_id, &sweep_id);
                    own_read = true;
                    continue;
                }
            };
            feeds_closed = 0;
            match apply_delta(&mut seen, &delta) {
                Some(message) => {
                    if let Some(message) = message {
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    if delta.status.is_terminal() {
                        return;
                    }
                }
                // A gap between what this watcher saw and the delta: read it.
                None => own_read = true,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
}

/// The message a watcher whose state is `seen` sends for `delta`: `Some(None)` when it
/// brings nothing new, `None` when the watcher lacks points between its last one and
/// the delta's first, or the delta is of another attempt (it must read from the store).
fn apply_delta(seen: &mut WatchState, delta: &FeedDelta) -> Option<Option<pb::WatchRunResponse>> {
    if delta.attempt != seen.attempt {
        return None;
    }
    let points = if seen.after == delta.from {
        seen.after = delta.to;
        seen.points += delta.point_count;
        delta.points.clone()
    } else if delta.point_count == 0 || seen.after >= delta.to {
        // Already read by the watcher itself.
        prost::bytes::Bytes::new()
    } else {
        return None;
    };
    let lines: Vec<pb::LogLine> = if delta.lines_to > seen.lines {
        let new = (delta.lines_to - seen.lines) as usize;
        let skip = delta.lines.len().saturating_sub(new);
        delta.lines[skip..].to_vec()
    } else {
        Vec::new()
    };
    seen.lines = seen.lines.max(delta.lines_to);
    let changed = !points.is_empty() || !lines.is_empty() || seen.status != Some(delta.status);
    seen.status = Some(delta.status);
    Some(changed.then(|| pb::WatchRunResponse {
        attempt: delta.attempt,
        points: Vec::new(),
        encoded_points: points,
        lines,
        status: convert::run_status_to_pb(delta.status) as i32,
        downsampled: false,
    }))
}

/// Feeds an `ExportRuns` stream page by page.
pub(crate) fn spawn_export(shared: Arc<ServiceHandle>, mut query: RunQuery, tx: Sender<pb::Run>) {
    tokio::spawn(async move {
        let mut remaining = query.limit;
        loop {
            let page_size = if remaining == 0 {
                EXPORT_PAGE
            } else {
                remaining.min(EXPORT_PAGE)
            };
            query.limit = page_size;
            let moved = query;
            let result = shared
                .read(move |q| {
                    let page = q.query_runs(&moved);
                    Ok((page, moved))
                })
                .await;
            let (page, returned) = match result {
                Ok(answer) => answer,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            query = returned;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            let count = page.runs.len();
            for run in &page.runs {
                if tx.send(Ok(convert::run_to_pb(run))).await.is_err() {
                    return;
                }
            }
            if remaining > 0 {
                remaining -= count.min(remaining);
                if remaining == 0 {
                    return;
                }
            }
            let Some(cursor) = page.next_cursor else {
                return;
            };
            query.after = Cursor::decode(&cursor).ok().map(|c| c.last);
        }
    });
}

impl crate::reads::Queries {
    /// Marks everything stored of the run's current attempt as seen (a watch of only
    /// what is new), reading the points' keys page by page.
    fn watch_skip(&self, run_id: &str, seen: &mut WatchState) -> Result<(), CoordinatorError> {
        let run = self.run_record(run_id)?;
        let Some(attempt) = run.current_attempt() else {
            return Ok(());
        };
        seen.attempt = attempt.number;
        self.each_point(&run.id, attempt.number, None, |key, _| {
            seen.after = Some(key);
            seen.points += 1;
        })?;
        seen.lines = attempt.log_lines;
        Ok(())
    }

    /// What a watcher has not seen yet of a run: the current attempt's points and log
    /// lines past `seen`, and the run's status.
    fn run_delta(
        &self,
        run_id: &str,
        seen: &mut WatchState,
        card: bool,
    ) -> Result<(RunStatus, Option<pb::WatchRunResponse>), CoordinatorError> {
        let run = self.run_record(run_id)?;
        let Some(attempt) = run.current_attempt() else {
            return Ok((run.status, None));
        };
        if attempt.number != seen.attempt {
            *seen = WatchState {
                attempt: attempt.number,
                status: seen.status,
                ..WatchState::default()
            };
        }
        let mut downsampled = false;
        seen.behind = false;
        let points = if attempt.metric_points > seen.points {
            if seen.after.is_none() && card {
                // What was stored before the watch: the card's bounded view of it.
                let card = self.card_series(&run.id, attempt.number)?;
                seen.points = card.total;
                seen.after = card.last;
                downsampled = card.downsampled;
                card.points.iter().map(convert::point_to_pb).collect()
            } else {
                // Only what arrived since, read from where the last message ended.
                let fresh = self.store.metrics_after(
                    &run.id,
                    attempt.number,
                    seen.after,
                    WATCH_POINTS_PER_MESSAGE,
                    WATCH_BYTES_PER_MESSAGE,
                )?;
                seen.points += fresh.len() as u64;
                if let Some((key, _)) = fresh.last() {
                    seen.after = Some(*key);
                }
                seen.behind = attempt.metric_points > seen.points && !fresh.is_empty();
                fresh
                    .iter()
                    .map(|(_, point)| convert::point_to_pb(point))
                    .collect()
            }
        } else {
            Vec::new()
        };
        let lines = if attempt.log_lines > seen.lines {
            let wanted = ((attempt.log_lines - seen.lines) as usize).min(WATCH_BACKLOG_LINES);
            let tail = self.store.log_tail(&run.id, attempt.number, wanted)?;
            seen.lines = attempt.log_lines;
            tail.iter().map(convert::log_to_pb).collect()
        } else {
            Vec::new()
        };
        let changed = !points.is_empty() || !lines.is_empty() || seen.status != Some(run.status);
        seen.status = Some(run.status);
        let message = changed.then(|| pb::WatchRunResponse {
            attempt: attempt.number,
            points,
            lines,
            status: convert::run_status_to_pb(run.status) as i32,
            downsampled,
            encoded_points: Default::default(),
        });
        Ok((run.status, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> Option<PointKey> {
        Some(PointKey { seq, index: 0 })
    }

    fn delta(attempt: u32, from: u64, to: u64, lines_to: u64, lines: &[&str]) -> FeedDelta {
        FeedDelta {
            attempt,
            from: (from > 0).then(|| key(from)).flatten(),
            to: key(to),
            points: pb::encode_points(
                &(from + 1..=to)
                    .map(|step| pb::MetricPoint {
                        step: Some(step as i64),
                        values: Default::default(),
                        time_ms: 0,
                    })
                    .collect::<Vec<_>>(),
            ),
            point_count: to - from,
            lines_to,
            lines: lines
                .iter()
                .map(|text| pb::LogLine {
                    time_ms: 0,
                    stream: "stdout".into(),
                    text: text.to_string(),
                })
                .collect(),
            status: RunStatus::Running,
        }
    }

    #[test]
    fn a_watcher_takes_a_feed_delta_only_where_it_continues_what_it_saw() {
        // As the watcher's client decodes the message.
        let steps = |message: &pb::WatchRunResponse| -> Vec<i64> {
            use prost::Message;
            let decoded =
                pb::WatchRunResponse::decode(message.encode_to_vec().as_slice()).expect("decodes");
            decoded.points.iter().filter_map(|p| p.step).collect()
        };
        // In step: the delta continues from the watcher's last point.
        let mut seen = WatchState {
            attempt: 1,
            after: key(2),
            points: 2,
            lines: 1,
            status: Some(RunStatus::Running),
            ..WatchState::default()
        };
        let message = apply_delta(&mut seen, &delta(1, 2, 4, 3, &["b", "c"]))
            .expect("continues")
            .expect("news");
        assert_eq!(steps(&message), vec![3, 4]);
        assert_eq!(message.lines.len(), 2);
        assert_eq!((seen.after, seen.points, seen.lines), (key(4), 4, 3));
        // Already read by the watcher itself: nothing is sent twice.
        assert!(apply_delta(&mut seen, &delta(1, 1, 4, 3, &["b", "c"]))
            .expect("no gap")
            .is_none());
        // A gap (the watcher saw up to 4, the delta starts after 6) or another attempt:
        // the watcher reads the store itself.
        assert!(apply_delta(&mut seen, &delta(1, 6, 8, 5, &[])).is_none());
        assert!(apply_delta(&mut seen, &delta(2, 0, 1, 1, &[])).is_none());
        assert_eq!((seen.after, seen.points), (key(4), 4));
        // Only the lines past the watcher's count are sent.
        let message = apply_delta(&mut seen, &delta(1, 4, 5, 5, &["c", "d", "e"]))
            .expect("continues")
            .expect("news");
        let texts: Vec<&str> = message.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["d", "e"]);
    }
}
