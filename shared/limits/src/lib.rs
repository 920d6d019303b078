//! Every bound ladder puts on what a client, an agent or a run can make grow, in one
//! place, so that both ends of a connection read the same constants.
//!
//! The rule behind them: nothing a peer sends can grow a message, a buffer, a listing or
//! a stored record without limit. A value beyond a request limit is refused at the
//! boundary with INVALID_ARGUMENT naming the field and the limit; a value beyond a
//! run's budget (its output) is cut, and the cut is recorded on the run.
//!
//! The documentation's limits section lists each of these with its value; a limit added
//! here belongs there too.

// --- gRPC messages ------------------------------------------------------------------

/// Largest gRPC message either side decodes or encodes. Servers and clients are both
/// configured from this constant (tonic's default is 4 MiB on decode).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Largest batch of run output (metric points, log lines, info) an agent puts in one
/// message: a quarter of [`MAX_MESSAGE_BYTES`], so protobuf framing and the other fields
/// of the message always fit.
pub const MAX_OUTPUT_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 4;

// --- listings -------------------------------------------------------------------------

/// Page size used by a list RPC when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page a list RPC returns; larger requested sizes are refused.
pub const MAX_PAGE_SIZE: usize = 1_000;

/// Largest cursor a client may send back (cursors are opaque and made by the server).
pub const MAX_CURSOR_BYTES: usize = 4 * 1024;

// --- identifiers and names sent by clients and agents -------------------------------

/// Ids in requests (sweep ids, run ids).
pub const MAX_ID_BYTES: usize = 128;

/// Agent names.
pub const MAX_AGENT_NAME_BYTES: usize = 256;

/// An agent's hostname (the DNS limit is 253).
pub const MAX_HOSTNAME_BYTES: usize = 255;

/// An agent's version string.
pub const MAX_VERSION_BYTES: usize = 128;

/// Labels per agent, and the length of each key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 128;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// GPUs one agent may report, and the length of a GPU's uuid and name.
pub const MAX_GPUS_PER_AGENT: usize = 64;
pub const MAX_GPU_TEXT_BYTES: usize = 256;

/// CPU slots one agent may report.
pub const MAX_AGENT_SLOTS: u32 = 1_024;

/// Leases an agent may claim to hold when it registers (at most one per slot, queued
/// run and GPU).
pub const MAX_HELD_LEASES: usize = 2 * MAX_AGENT_SLOTS as usize + MAX_GPUS_PER_AGENT;

// --- sweeps ----------------------------------------------------------------------------

/// Largest sweep file accepted.
pub const MAX_SWEEP_FILE_BYTES: usize = 1 << 20;

/// Largest `parallel:` of a sweep.
pub const MAX_SWEEP_PARALLEL: u64 = 10_000;

/// Largest `max_runs:` of a sweep.
pub const MAX_SWEEP_RUNS: u64 = 1_000_000_000;

// --- run annotations (UpdateRun) ------------------------------------------------------

/// One note's text.
pub const MAX_NOTE_BYTES: usize = 4 * 1024;
/// Notes on one run.
pub const MAX_NOTES_PER_RUN: usize = 100;
/// One tag.
pub const MAX_TAG_BYTES: usize = 128;
/// Tags on one run.
pub const MAX_TAGS_PER_RUN: usize = 64;

// --- run output -------------------------------------------------------------------------

/// One line of a run's output; longer lines are cut and end in a marker. The agent never
/// holds more than this much of an unfinished line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Log lines of one attempt forwarded to the coordinator; the rest stays in the
/// attempt's log file on the agent and the cut is noted in the log.
pub const MAX_ATTEMPT_LOG_LINES: u64 = 1_000_000;

/// Bytes of log text of one attempt the coordinator stores (each line's text; a line
/// is cut at [`MAX_LINE_BYTES`]). Past it, further lines are dropped, the attempt is
/// marked `log_capped` on the run's card and the cut is noted in its log; the whole
/// output stays in the attempt's log file on the agent. The agent stops forwarding there.
pub const MAX_ATTEMPT_LOG_BYTES: u64 = 256 << 20;

/// Metric points of one attempt the coordinator stores (a point is one step's values).
/// Past it, further points are dropped, the attempt is marked `points_capped` and the
/// cut is noted in its log.
pub const MAX_ATTEMPT_METRIC_POINTS: u64 = 5_000_000;

/// Distinct metric names of one run; points naming further metrics keep only the
/// metrics already known, and the drop is noted in the run's log.
pub const MAX_METRICS_PER_RUN: usize = 1_000;

/// Bytes of reported-but-unacknowledged events an agent buffers per attempt before it
/// stops reading the run's output (backpressure: the run blocks on its pipe).
pub const MAX_UNACKED_BYTES_PER_ATTEMPT: usize = 2 * MAX_OUTPUT_BATCH_BYTES;

/// Points per metric a run card (`GetRun`, the first `WatchRun` message) carries per
/// attempt: longer histories are downsampled into buckets represented by their min, max
/// and last points, the full series being paged with `ListMetricPoints`.
pub const MAX_CARD_POINTS_PER_METRIC: usize = 1_000;

/// Points (all metrics together) a run card carries per attempt; with many metrics each
/// gets an equal share (but at least [`MIN_CARD_POINTS_PER_METRIC`]).
pub const MAX_CARD_POINTS: usize = 20_000;

/// The smallest share of [`MAX_CARD_POINTS`] a metric gets on a card.
pub const MIN_CARD_POINTS_PER_METRIC: usize = 30;

/// Points in one `ListMetricPoints` page.
pub const MAX_POINTS_PAGE_SIZE: usize = 10_000;

/// Encoded bytes of points or lines in one page or stream message; a page ends early
/// when it reaches this.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

// --- queries ----------------------------------------------------------------------------

/// A `--where` query's length.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Parentheses and `not`s nested inside one another in a query.
pub const MAX_QUERY_DEPTH: usize = 64;

/// Sort keys of one query.
pub const MAX_SORT_KEYS: usize = 16;

// --- connections and streams --------------------------------------------------------

/// Concurrent watch streams (`WatchRun`, `WatchSweep`) one principal may hold open.
pub const MAX_WATCHES_PER_PRINCIPAL: usize = 256;

/// Longest query string of a web API request (`/api/v1/...`): room for the longest
/// `where` percent-encoded.
pub const MAX_HTTP_QUERY_BYTES: usize = 64 * 1024;

/// Longest body of the web sign-in form (`POST /signin`).
pub const MAX_SIGNIN_FORM_BYTES: usize = 4 * 1024;

/// Bytes of the store's page cache held in the coordinator's memory (sled's
/// `cache_capacity`, whose default is 1 GiB). Reads beyond it go to the file and the
/// operating system's page cache.
pub const STORE_CACHE_BYTES: u64 = 128 << 20;

/// Run cards (`GetRun`, the first `WatchRun` message) built at once; each holds its
/// attempt's whole metric series in memory while downsampling it, so more wait.
pub const MAX_CONCURRENT_CARD_READS: usize = 4;

/// Points, and bytes of points, in one `WatchRun` message after the first; a stream
/// holds at most [`WATCH_STREAM_MESSAGES`] of them unsent, so a slow watcher costs the
/// coordinator at most about 1 MiB.
pub const MAX_WATCH_MESSAGE_POINTS: usize = 5_000;
pub const MAX_WATCH_MESSAGE_BYTES: usize = 512 * 1024;
pub const WATCH_STREAM_MESSAGES: usize = 2;

/// Connections the coordinator keeps open at once (fewer when its file descriptor limit
/// is lower: it raises its soft limit to the hard one and keeps 256 descriptors for
/// itself); further clients wait in the listen backlog until one closes.
pub const MAX_CONNECTIONS: usize = 4_096;

/// How long a new connection may stay silent (no bytes at all) before it is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2 keep-alive: the coordinator pings each connection this often and closes it
/// when a ping is not answered within [`KEEPALIVE_TIMEOUT`].
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

// --- artifacts ----------------------------------------------------------------------------

/// Bytes of file content in one message of an artifact upload or download: a sixteenth
/// of [`MAX_MESSAGE_BYTES`] (1 MiB), well under tonic's 4 MiB default too, so a peer
/// configured with the default still accepts every chunk.
pub const ARTIFACT_CHUNK_BYTES: usize = MAX_MESSAGE_BYTES / 16;

/// Largest single artifact file. An upload that declares more is refused before any byte
/// is sent; one that sends more than it declared is refused and leaves nothing.
pub const MAX_ARTIFACT_FILE_BYTES: u64 = 64 << 30;

/// Bytes of artifacts one run may record, all attempts together (each file counted once
/// per name, however many runs share its content). An upload past it is refused and the
/// refusal is noted in the run's log.
pub const MAX_RUN_ARTIFACT_BYTES: u64 = 256 << 30;

/// Artifact files one run may record (a directory counts each file in it).
pub const MAX_ARTIFACTS_PER_RUN: usize = 1_000;

/// An artifact's name: its path relative to the run directory, `/`-separated.
pub const MAX_ARTIFACT_NAME_BYTES: usize = 1_024;

/// Paths in a sweep's `artifacts:` list.
pub const MAX_DECLARED_ARTIFACTS: usize = 64;
