//! Command line and environment → validated [`Config`].
//!
//! clap parses a raw [`Cli`] (every flag also reads `SSEKIFY_<NAME>`), and
//! [`Config::try_from`] turns it into typed values, failing start-up with one
//! sentence that names the offending flag. The same command line holds the
//! tools that share the binary ([`Command`]).

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::log::{LogFormat, LogLevel};
use crate::units::{parse_duration, parse_size};

/// Default heartbeat interval: below the 30–60 s idle timeouts of common proxies
/// and load balancers, so an idle stream is never cut by one of them.
pub const DEFAULT_KEEP_ALIVE: &str = "15s";
/// Default `retry:` hint sent to browsers (the seed's `retryMs`).
pub const DEFAULT_RETRY: &str = "2s";
/// Default upper bound of one encoded frame (the seed's `maxPayloadBytes`).
pub const DEFAULT_MAX_PAYLOAD: &str = "1MiB";
/// Default bound of a batch publish body: room for a few thousand typical messages.
pub const DEFAULT_MAX_BATCH_BODY: &str = "16MiB";
/// Default of `--body-budget`: four largest batches at once per shard.
pub const DEFAULT_BODY_BUDGET: &str = "64MiB";
/// Default queue bounds per connection (the seed's `maxQueueItems`/`maxQueueBytes`).
pub const DEFAULT_MAX_QUEUE_ITEMS: usize = 100;
/// See [`DEFAULT_MAX_QUEUE_ITEMS`].
pub const DEFAULT_MAX_QUEUE_BYTES: &str = "256KiB";
/// Request heads above this answer 431 (nginx's default large header buffer is 8 KiB).
pub const DEFAULT_MAX_HEAD: &str = "8KiB";
/// Bus log partitions: enough to spread a small Redis Cluster's slots, few
/// enough that an instance's subscription and catch-up reads stay cheap.
pub const DEFAULT_BUS_PARTITIONS: u16 = 16;
/// Bus log entries per partition: at 16 partitions, 1.6 M messages, minutes
/// of history at tens of thousands of messages per second, for instances
/// that stalled or reconnected to catch up without a gap.
pub const DEFAULT_BUS_HISTORY: u64 = 100_000;
/// Default clock skew allowed on a credential's `exp` and `nbf`: covers hosts
/// kept by NTP (well under a second apart) with room to spare, while a token
/// still dies within a minute of its `exp`.
pub const DEFAULT_AUTH_LEEWAY: &str = "30s";
/// Default interval between fetches of `--jwks-url` (API.md "Subscriber auth
/// additions"): providers rotate keys over days and publish the next one
/// ahead, and an unknown `kid` fetches at once anyway, so minutes only bound
/// how long a withdrawn key keeps working.
pub const DEFAULT_JWKS_REFRESH: &str = "5m";
/// Shortest `--jwks-refresh`: more often only loads the identity provider.
pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);
/// Default bound on one webhook auth check: well above an app's usual few
/// milliseconds, well below a browser giving up on the stream.
pub const DEFAULT_AUTH_TIMEOUT: &str = "2s";
/// Default reuse of a webhook answer: long enough to absorb a reconnect storm
/// and several tabs, short enough that a logout takes effect within seconds.
pub const DEFAULT_AUTH_CACHE_TTL: &str = "5s";
/// Default bound on the rooms one subscriber joins: room sets cost memory per
/// membership on every shard, and pages rarely need more than a handful.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 64;
/// Default number of webhook answers kept per shard.
pub const DEFAULT_AUTH_CACHE_MAX: usize = 10_000;
/// Default memory bound of remembered `Idempotency-Key`s: room for the
/// default --idempotency-max-keys of single-message answers (about 200 B a
/// key), so the key bound binds for those and this one for large batch
/// answers or floods of long keys.
pub const DEFAULT_IDEMPOTENCY_MAX_BYTES: &str = "256MiB";
/// Smallest --idempotency-max-bytes: below it a shard's share holds too few
/// keys for a retry to find its answer.
pub const MIN_IDEMPOTENCY_MAX_BYTES: usize = 64 << 10;

/// Which kernel interface the shards and the bus thread drive their sockets with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail to start.
    Uring,
    /// epoll (mio) always.
    Epoll,
}

impl IoDriver {
    /// True when a thread should build an io_uring runtime first (with
    /// `Auto`, falling back to epoll if that fails).
    pub fn tries_uring(self) -> bool {
        match self {
            IoDriver::Uring => true,
            IoDriver::Epoll => false,
            IoDriver::Auto => monoio::utils::detect_uring(),
        }
    }
}

/// What happens when a connection's queue is full (the seed's `dropPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DropPolicy {
    /// Drop the oldest queued frames to make room.
    Oldest,
    /// Drop the frame that does not fit.
    Newest,
    /// Close the slow connection; the client reconnects and resumes.
    Disconnect,
}

/// What a user's connection beyond `--max-connections-per-user` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UserLimitPolicy {
    /// The new connection is refused with 429.
    Reject,
    /// The new connection wins: the user's oldest gets `ssekify.evicted`, then closes.
    EvictOldest,
}

/// How subscribers prove who they are (API.md "Subscriber auth").
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Development: the userId query parameter is trusted, any room may be joined.
    None,
    /// A JWT (Authorization: Bearer, or ?token=): HS256 with --jwt-secret, RS256/ES256 with --jwt-public-key or a JWKS.
    Jwt,
    /// A presigned URL (?user=&rooms=&exp=&sig=) signed with --sign-secret; see `ssekify sign`.
    Signed,
    /// The application answers at --auth-url, from the request's cookies and headers.
    Webhook,
}

/// The git commit the binary was built from (`build.rs`), or `unknown`
/// when the sources came without their history (a tarball, a Docker
/// context without `.git`): a log line or a bug report then says which
/// code ran, not only which release.
pub const COMMIT: &str = env!("SSEKIFY_COMMIT");

/// What `ssekify --version` prints after the name: the release and the commit.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SSEKIFY_COMMIT"), ")");

/// The end of `--help`: how every boolean flag reads its value, which
/// clap's list of possible values (`true, false`) does not say.
const BOOLEANS_HELP: &str =
    "Booleans (flags and SSEKIFY_* variables) take true/false, 1/0, yes/no or on/off in any case; \
a bare --flag is true.";

/// Raw command line; see [`Config`] for the validated form. Without a
/// subcommand it runs the server.
#[derive(Parser, Debug, Clone)]
#[command(name = "ssekify", version = VERSION, about = "Server-Sent Events push server", long_about = None)]
#[command(after_help = BOOLEANS_HELP)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's flags.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The server's flags, each also read from `SSEKIFY_<NAME>`; shared by the
/// server and `ssekify check-config`, so a check reads exactly what a start
/// would. Booleans take `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`
/// (any case), and a bare `--flag` means true.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Public listener: GET /sse, /t/{tenant}/sse, /healthz, /readyz.
    #[arg(long, env = "SSEKIFY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Api listener: publish, admin, stats, metrics. May equal --listen.
    #[arg(long, env = "SSEKIFY_API_LISTEN", default_value = "127.0.0.1:8081")]
    pub api_listen: String,
    /// Bearer key required on every api request; mandatory when --api-listen is not loopback.
    #[arg(long, env = "SSEKIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Worker threads, one shard each (default: number of cores).
    #[arg(long, env = "SSEKIFY_SHARDS")]
    pub shards: Option<usize>,
    /// Pin each shard thread to its own core; turn off where cores are shared
    /// (containers without exclusive CPUs).
    #[arg(long, env = "SSEKIFY_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub pin_cores: bool,
    /// How subscribers authenticate.
    #[arg(long, env = "SSEKIFY_AUTH", value_enum, default_value = "none")]
    pub auth: AuthMode,
    /// HS256 secret for --auth jwt, at least 32 bytes (prefer the environment: arguments show in `ps`).
    #[arg(long, env = "SSEKIFY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or ES256 tokens with --auth jwt: RSA (2048-8192 bits) or EC P-256, as
    /// `BEGIN PUBLIC KEY` (SPKI) or `BEGIN RSA PUBLIC KEY`.
    #[arg(long, env = "SSEKIFY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (RFC 7517) of RS256/ES256 keys, chosen by the token's kid; re-read on SIGHUP.
    #[arg(long, env = "SSEKIFY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL (https:// or http://): fetched at start, every --jwks-refresh,
    /// on SIGHUP and when a token's kid is unknown (at most every 30s); kept on fetch errors.
    #[arg(long, env = "SSEKIFY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for an https:// --jwks-url besides Mozilla's roots (a provider behind a private CA).
    #[arg(long, env = "SSEKIFY_JWKS_CA")]
    pub jwks_ca: Option<PathBuf>,
    /// How often --jwks-url is fetched again.
    #[arg(long, env = "SSEKIFY_JWKS_REFRESH", default_value = DEFAULT_JWKS_REFRESH)]
    pub jwks_refresh: String,
    /// The `iss` claim every token must carry (--auth jwt), such as https://idp.example/realms/app.
    #[arg(long, env = "SSEKIFY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// A value the token's `aud` claim (a string or an array) must be or contain (--auth jwt).
    #[arg(long, env = "SSEKIFY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// HMAC-SHA256 secret for --auth signed and `ssekify sign`, at least 32 bytes.
    #[arg(long, env = "SSEKIFY_SIGN_SECRET", hide_env_values = true)]
    pub sign_secret: Option<String>,
    /// Clock skew allowed on a credential's exp and nbf.
    #[arg(long, env = "SSEKIFY_AUTH_LEEWAY", default_value = DEFAULT_AUTH_LEEWAY)]
    pub auth_leeway: String,
    /// The application's auth check for --auth webhook (http://host[:port]/path; resolved at start).
    #[arg(long, env = "SSEKIFY_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Bound on one webhook auth check (connect, send, answer); past it the subscriber gets 503.
    #[arg(long, env = "SSEKIFY_AUTH_TIMEOUT", default_value = DEFAULT_AUTH_TIMEOUT)]
    pub auth_timeout: String,
    /// How long a webhook answer is reused for the same cookies, headers and query (0: never).
    #[arg(long, env = "SSEKIFY_AUTH_CACHE_TTL", default_value = DEFAULT_AUTH_CACHE_TTL)]
    pub auth_cache_ttl: String,
    /// Webhook answers kept per shard.
    #[arg(long, env = "SSEKIFY_AUTH_CACHE_MAX", default_value_t = DEFAULT_AUTH_CACHE_MAX)]
    pub auth_cache_max: usize,
    /// Access-Control-Allow-Origin for /sse (also answers OPTIONS preflights).
    #[arg(long, env = "SSEKIFY_CORS_ORIGIN")]
    pub cors_origin: Option<String>,
    /// Serve a subscriber demo page at GET / on the public listener.
    #[arg(long, env = "SSEKIFY_DEMO", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub demo: bool,
    /// Heartbeat `: ping` after this much idleness on a stream.
    #[arg(long, env = "SSEKIFY_KEEP_ALIVE", default_value = DEFAULT_KEEP_ALIVE)]
    pub keep_alive: String,
    /// `retry:` reconnect hint sent first on every stream.
    #[arg(long, env = "SSEKIFY_RETRY", default_value = DEFAULT_RETRY)]
    pub retry: String,
    /// Largest encoded frame a publish may produce (413 above).
    #[arg(long, env = "SSEKIFY_MAX_PAYLOAD", default_value = DEFAULT_MAX_PAYLOAD)]
    pub max_payload: String,
    /// Largest body of a batch publish (413 above).
    #[arg(long, env = "SSEKIFY_MAX_BATCH_BODY", default_value = DEFAULT_MAX_BATCH_BODY)]
    pub max_batch_body: String,
    /// Publish body bytes one shard reads at once, over all its requests (503 with Retry-After above).
    #[arg(long, env = "SSEKIFY_BODY_BUDGET", default_value = DEFAULT_BODY_BUDGET)]
    pub body_budget: String,
    /// Replay entries kept per user, per room and for broadcasts; 0 disables replay.
    #[arg(long, env = "SSEKIFY_RECENT_BUFFER", default_value_t = 20)]
    pub recent_buffer: usize,
    /// A replay ring with no new message for this long is dropped; 0 keeps rings until evicted.
    #[arg(long, env = "SSEKIFY_RECENT_TTL", default_value = "30m")]
    pub recent_ttl: String,
    /// Replay rings of users without a connection, per instance (least recently
    /// active evicted first); a user with a connection keeps its ring.
    #[arg(long, env = "SSEKIFY_RECENT_MAX_USERS", default_value_t = 10_000)]
    pub recent_max_users: usize,
    /// Rooms with a replay ring per instance (least recently active evicted first).
    #[arg(long, env = "SSEKIFY_RECENT_MAX_ROOMS", default_value_t = 10_000)]
    pub recent_max_rooms: usize,
    /// Frame bytes all replay rings may reference per instance; beyond it go rings of
    /// users without a connection and room rings, then connected users' oldest entries.
    #[arg(long, env = "SSEKIFY_RECENT_MAX_BYTES", default_value = "256MiB")]
    pub recent_max_bytes: String,
    /// How long a publish's Idempotency-Key is remembered.
    #[arg(long, env = "SSEKIFY_IDEMPOTENCY_WINDOW", default_value = "5m")]
    pub idempotency_window: String,
    /// Idempotency keys remembered per instance (oldest forgotten first beyond it).
    #[arg(long, env = "SSEKIFY_IDEMPOTENCY_MAX_KEYS", default_value_t = 1_000_000)]
    pub idempotency_max_keys: usize,
    /// Memory for remembered idempotency keys per instance (keys, answers and
    /// bookkeeping; each shard holds its share, oldest forgotten first beyond it).
    #[arg(long, env = "SSEKIFY_IDEMPOTENCY_MAX_BYTES", default_value = DEFAULT_IDEMPOTENCY_MAX_BYTES)]
    pub idempotency_max_bytes: String,
    /// Redis for the cross-instance bus: `redis://[user:pass@]host:port[/db]`,
    /// `redis-sentinel://h1:26379,h2:26379/<master>`, `redis-cluster://h1:7000,h2:7001`;
    /// `rediss://…`, `rediss-sentinel://…`, `rediss-cluster://…` for TLS.
    #[arg(long, env = "SSEKIFY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// PEM file of the CA that signed Redis's TLS certificate, trusted besides Mozilla's roots (rediss:// only).
    #[arg(long, env = "SSEKIFY_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate for a Redis with `tls-auth-clients yes` (with --redis-key).
    #[arg(long, env = "SSEKIFY_REDIS_CERT")]
    pub redis_cert: Option<PathBuf>,
    /// PEM private key of --redis-cert.
    #[arg(long, env = "SSEKIFY_REDIS_KEY")]
    pub redis_key: Option<PathBuf>,
    /// Prefix of the bus's Redis keys and channels, shared by the instances of one tier.
    #[arg(long, env = "SSEKIFY_CHANNEL", default_value = "ssekify:bus")]
    pub channel: String,
    /// Partitions of the bus log: each user, room and broadcast has its order in
    /// one; more spread a Redis Cluster's load over more slots.
    #[arg(long, env = "SSEKIFY_BUS_PARTITIONS", default_value_t = DEFAULT_BUS_PARTITIONS)]
    pub bus_partitions: u16,
    /// Entries the bus log keeps per partition for instances catching up after
    /// a stall or reconnect (more: longer outages recovered without a gap).
    #[arg(long, env = "SSEKIFY_BUS_HISTORY", default_value_t = DEFAULT_BUS_HISTORY)]
    pub bus_history: u64,
    /// Tenants allowed under /t/{tenant}/sse and /v1/t/{tenant}/…, comma-separated
    /// (others get 404); without it any valid name is a tenant.
    #[arg(long, env = "SSEKIFY_TENANTS")]
    pub tenants: Option<String>,
    /// Tenant quotas and keys, a JSON file: defaults and per tenant maxConnections, publishRate,
    /// publishBurst, recentMaxBytes, apiKey (see the README's "Tenants"); re-read on SIGHUP.
    #[arg(long, env = "SSEKIFY_TENANT_CONFIG")]
    pub tenant_config: Option<PathBuf>,
    /// How long a publish waits for Redis before answering 503, and how soon a
    /// Redis that stops answering is noticed (publishes and /readyz go 503).
    #[arg(long, env = "SSEKIFY_BUS_TIMEOUT", default_value = "2s")]
    pub bus_timeout: String,
    /// Frames a connection may have waiting for its client (what its socket will not take now).
    #[arg(long, env = "SSEKIFY_MAX_QUEUE_ITEMS", default_value_t = DEFAULT_MAX_QUEUE_ITEMS)]
    pub max_queue_items: usize,
    /// Bytes a connection may have waiting for its client (what its socket will not take now).
    #[arg(long, env = "SSEKIFY_MAX_QUEUE_BYTES", default_value = DEFAULT_MAX_QUEUE_BYTES)]
    pub max_queue_bytes: String,
    /// What a full queue does to the next frame.
    #[arg(long, env = "SSEKIFY_DROP_POLICY", value_enum, default_value = "oldest")]
    pub drop_policy: DropPolicy,
    /// Subscribers the instance holds at most (503 above; 64 more public sockets may be reading requests); 0 = the open-file limit less a reserve of a tenth (128 to 4096) kept for the api listener, the bus, webhooks and health checks.
    #[arg(long, env = "SSEKIFY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Connections one user may hold at most on this instance; 0 = no limit (see --user-limit-policy).
    #[arg(long, env = "SSEKIFY_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: usize,
    /// What a connection over --max-connections-per-user does: reject (429) or evict-oldest (the new one wins).
    #[arg(long, env = "SSEKIFY_USER_LIMIT_POLICY", value_enum, default_value = "reject")]
    pub user_limit_policy: UserLimitPolicy,
    /// Rooms one subscriber may join (?rooms=); 400 above.
    #[arg(long, env = "SSEKIFY_MAX_ROOMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_ROOMS_PER_CONNECTION)]
    pub max_rooms_per_connection: usize,
    /// The application's endpoint for lifecycle events: batched POSTs of {"events":[…]} (http:// only).
    #[arg(long, env = "SSEKIFY_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Most user ids a room presence answer lists (?list=users); longer lists are cut and marked truncated.
    #[arg(long, env = "SSEKIFY_PRESENCE_LIST_MAX", default_value_t = 1000)]
    pub presence_list_max: usize,
    /// Largest request head (request line + headers); 431 above.
    #[arg(long, env = "SSEKIFY_MAX_HEAD", default_value = DEFAULT_MAX_HEAD)]
    pub max_head: String,
    /// Most headers a request may carry; 431 above.
    #[arg(long, env = "SSEKIFY_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,
    /// Time a client has to send a whole request once it started one (slow clients are closed).
    #[arg(long, env = "SSEKIFY_READ_TIMEOUT", default_value = "10s")]
    pub read_timeout: String,
    /// How long a keep-alive api connection may sit between requests.
    #[arg(long, env = "SSEKIFY_IDLE_TIMEOUT", default_value = "75s")]
    pub idle_timeout: String,
    /// A stream whose socket accepts no bytes for this long is closed (stalled or vanished client).
    #[arg(long, env = "SSEKIFY_WRITE_TIMEOUT", default_value = "30s")]
    pub write_timeout: String,
    /// Time over which shutdown spreads the closes of streams.
    #[arg(long, env = "SSEKIFY_SHUTDOWN_GRACE", default_value = "5s")]
    pub shutdown_grace: String,
    /// Listen backlog of every socket.
    #[arg(long, env = "SSEKIFY_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,
    /// Kernel interface for sockets.
    #[arg(long, env = "SSEKIFY_IO_DRIVER", value_enum, default_value = "auto")]
    pub io_driver: IoDriver,
    /// Log line format.
    #[arg(long, env = "SSEKIFY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Lowest level logged (debug adds a line per subscriber connect and disconnect, with the reason).
    #[arg(long, env = "SSEKIFY_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Log one info line per api listener request: method, path (no query), status, duration, bytes.
    #[arg(long, env = "SSEKIFY_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub access_log: bool,
}

/// Subcommands: tools that share the binary with the server.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print a presigned subscribe URL for --auth signed (for backends and scripts).
    Sign(SignArgs),
    /// Check the server's flags, environment and files, print the settings in force (no secrets) and exit: 0 valid, 2 not.
    #[command(after_help = BOOLEANS_HELP)]
    CheckConfig(Box<ServerArgs>),
}

/// Arguments of `ssekify sign` ([`crate::sign::url`] mints the URL).
#[derive(Args, Debug, Clone)]
pub struct SignArgs {
    /// User the URL subscribes as; empty: anonymous (broadcasts and rooms only).
    #[arg(long, default_value = "")]
    pub user: String,
    /// Comma-separated rooms the URL joins (exactly these: the list is signed).
    #[arg(long, default_value = "")]
    pub rooms: String,
    /// How long the URL may be used to connect (an open stream is not cut at expiry).
    #[arg(long, default_value = "5m")]
    pub ttl: String,
    /// The server's --sign-secret.
    #[arg(long, env = "SSEKIFY_SIGN_SECRET", hide_env_values = true)]
    pub sign_secret: Option<String>,
    /// Tenant whose path the URL opens (signed too): give --base-url as http://host:8080/t/{tenant}/sse.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Subscribe URL to append the query to, such as http://host:8080/sse; without it only the query is printed.
    #[arg(long)]
    pub base_url: Option<String>,
}

/// Validated settings shared read-only by every shard.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Api listener address (may equal `listen`).
    pub api_listen: SocketAddr,
    /// Bearer key for api routes.
    pub api_key: Option<String>,
    /// Number of shard threads.
    pub shards: NonZeroUsize,
    /// Pin shard threads to cores.
    pub pin_cores: bool,
    /// CORS origin for /sse.
    pub cors_origin: Option<String>,
    /// Whether `GET /` serves the demo page.
    pub demo: bool,
    /// Idle time before a heartbeat.
    pub keep_alive: Duration,
    /// `retry:` hint.
    pub retry: Duration,
    /// Bound of one encoded frame.
    pub max_payload: usize,
    /// Bound of a batch publish body.
    pub max_batch_body: usize,
    /// Publish body bytes one shard reads at once.
    pub body_budget: usize,
    /// Replay ring length (0: replay off).
    pub recent_buffer: usize,
    /// Replay ring idle lifetime (zero: no expiry).
    pub recent_ttl: Duration,
    /// Replay rings of users without a connection, per instance.
    pub recent_max_users: usize,
    /// Replay rooms per instance.
    pub recent_max_rooms: usize,
    /// Replay frame bytes per instance, every ring counted.
    pub recent_max_bytes: usize,
    /// Idempotency-Key memory.
    pub idempotency_window: Duration,
    /// Idempotency keys per instance.
    pub idempotency_max_keys: usize,
    /// Idempotency table bytes per instance, every key's entry counted.
    pub idempotency_max_bytes: usize,
    /// Prefix of the bus's keys and channels.
    pub channel: String,
    /// Bus log partitions (1-1024).
    pub bus_partitions: u16,
    /// Bus log entries kept per partition.
    pub bus_history: u64,
    /// Allowed tenants, sorted and deduplicated (`None`: any valid name).
    pub tenants: Option<Vec<Box<str>>>,
    /// Publish acknowledgement deadline.
    pub bus_timeout: Duration,
    /// Queue bound in frames.
    pub max_queue_items: NonZeroUsize,
    /// Queue bound in bytes.
    pub max_queue_bytes: NonZeroUsize,
    /// Full-queue behaviour.
    pub drop_policy: DropPolicy,
    /// Subscribers the instance holds at most (None: derived from the
    /// open-file limit at start, see `server::connection_limit`).
    pub max_connections: Option<NonZeroUsize>,
    /// Per-user subscriber limit (None = unlimited).
    pub max_connections_per_user: Option<NonZeroUsize>,
    /// What a connection over the per-user limit does.
    pub user_limit_policy: UserLimitPolicy,
    /// Rooms one subscriber may join.
    pub max_rooms_per_connection: usize,
    /// Most user ids a room presence answer lists.
    pub presence_list_max: usize,
    /// Request head bound.
    pub max_head: usize,
    /// Header count bound.
    pub max_headers: usize,
    /// Whole-request read deadline.
    pub read_timeout: Duration,
    /// Keep-alive idle deadline.
    pub idle_timeout: Duration,
    /// Stalled-write deadline.
    pub write_timeout: Duration,
    /// Spread of closes on shutdown.
    pub shutdown_grace: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Kernel interface.
    pub io_driver: IoDriver,
    /// Log format.
    pub log_format: LogFormat,
    /// Log threshold.
    pub log_level: LogLevel,
    /// Whether api requests are logged (`--access-log`).
    pub access_log: bool,
}

/// Why start-up refused the configuration; `Display` is one sentence naming the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    flag: &'static str,
    reason: String,
}

impl ConfigError {
    /// A refusal of `flag` (without its dashes) for `reason`.
    pub fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        ConfigError { flag, reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{}: {}", self.flag, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn duration(flag: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|reason| ConfigError::new(flag, reason))
}

fn size(flag: &'static str, text: &str) -> Result<usize, ConfigError> {
    parse_size(text).map_err(|reason| ConfigError::new(flag, reason))
}

fn address(flag: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::new(flag, format!("`{text}` is not an address such as 127.0.0.1:8081 or [::1]:8081")))
}

fn positive(flag: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| ConfigError::new(flag, "must be at least 1"))
}

/// `a,b,c` → the sorted, deduplicated list; every name must be a valid
/// tenant name (API.md "Names").
fn tenants(list: &str) -> Result<Vec<Box<str>>, ConfigError> {
    let mut names: Vec<Box<str>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !crate::namespace::valid_name(name) {
            return Err(ConfigError::new(
                "tenants",
                format!("`{name}` is not a tenant name (1-128 bytes without control characters, ',' or '/')"),
            ));
        }
        names.push(name.into());
    }
    if names.is_empty() {
        return Err(ConfigError::new("tenants", "lists no tenant; leave it out to allow any name"));
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

impl TryFrom<&ServerArgs> for Config {
    type Error = ConfigError;

    fn try_from(cli: &ServerArgs) -> Result<Self, ConfigError> {
        let listen = address("listen", &cli.listen)?;
        let api_listen = address("api-listen", &cli.api_listen)?;
        let api_key = cli.api_key.clone().filter(|key| !key.is_empty());
        if api_key.is_none() && !api_listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "api-listen",
                format!("{api_listen} is reachable from other hosts, so --api-key (SSEKIFY_API_KEY) is required"),
            ));
        }
        if api_key.is_none() && listen == api_listen && listen.port() != 0 {
            return Err(ConfigError::new(
                "api-listen",
                "equals --listen, so publish and admin routes would be public: --api-key is required",
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let shards = positive("shards", cli.shards.unwrap_or(cores))?;
        if shards.get() > 1024 {
            return Err(ConfigError::new("shards", "must be at most 1024"));
        }
        let keep_alive = duration("keep-alive", &cli.keep_alive)?;
        if keep_alive < Duration::from_millis(100) {
            return Err(ConfigError::new("keep-alive", "must be at least 100ms"));
        }
        let max_payload = size("max-payload", &cli.max_payload)?;
        if max_payload < 64 {
            return Err(ConfigError::new("max-payload", "must be at least 64 bytes"));
        }
        let max_batch_body = size("max-batch-body", &cli.max_batch_body)?;
        let body_budget = size("body-budget", &cli.body_budget)?;
        if body_budget < max_batch_body.max(max_payload) {
            return Err(ConfigError::new(
                "body-budget",
                "must be at least --max-batch-body and --max-payload (the largest body must fit)",
            ));
        }
        let max_head = size("max-head", &cli.max_head)?;
        if !(512..=1 << 20).contains(&max_head) {
            return Err(ConfigError::new("max-head", "must be between 512B and 1MiB"));
        }
        let header_cap = crate::http::request::MAX_HEADERS_LIMIT;
        if cli.max_headers == 0 || cli.max_headers > header_cap {
            return Err(ConfigError::new("max-headers", format!("must be between 1 and {header_cap}")));
        }
        if cli.recent_buffer > 10_000 {
            return Err(ConfigError::new("recent-buffer", "must be at most 10000"));
        }
        if cli.backlog <= 0 {
            return Err(ConfigError::new("backlog", "must be at least 1"));
        }
        let idempotency_max_bytes = size("idempotency-max-bytes", &cli.idempotency_max_bytes)?;
        if idempotency_max_bytes < MIN_IDEMPOTENCY_MAX_BYTES {
            return Err(ConfigError::new("idempotency-max-bytes", "must be at least 64KiB"));
        }
        Ok(Config {
            listen,
            api_listen,
            api_key,
            shards,
            pin_cores: cli.pin_cores,
            cors_origin: cli.cors_origin.clone().filter(|origin| !origin.is_empty()),
            demo: cli.demo,
            keep_alive,
            retry: duration("retry", &cli.retry)?,
            max_payload,
            max_batch_body,
            body_budget,
            recent_buffer: cli.recent_buffer,
            recent_ttl: duration("recent-ttl", &cli.recent_ttl)?,
            recent_max_users: cli.recent_max_users,
            recent_max_rooms: cli.recent_max_rooms,
            recent_max_bytes: size("recent-max-bytes", &cli.recent_max_bytes)?,
            idempotency_window: duration("idempotency-window", &cli.idempotency_window)?,
            idempotency_max_keys: cli.idempotency_max_keys,
            idempotency_max_bytes,
            channel: if cli.channel.is_empty() {
                return Err(ConfigError::new("channel", "must not be empty"));
            } else {
                cli.channel.clone()
            },
            tenants: cli.tenants.as_deref().filter(|t| !t.is_empty()).map(tenants).transpose()?,
            bus_partitions: match cli.bus_partitions {
                1..=1024 => cli.bus_partitions,
                _ => return Err(ConfigError::new("bus-partitions", "must be 1-1024")),
            },
            bus_history: match cli.bus_history {
                0 => return Err(ConfigError::new("bus-history", "must be at least 1")),
                history => history,
            },
            bus_timeout: duration("bus-timeout", &cli.bus_timeout)?,
            max_queue_items: positive("max-queue-items", cli.max_queue_items)?,
            max_queue_bytes: positive("max-queue-bytes", size("max-queue-bytes", &cli.max_queue_bytes)?)?,
            drop_policy: cli.drop_policy,
            max_connections: NonZeroUsize::new(cli.max_connections),
            max_connections_per_user: NonZeroUsize::new(cli.max_connections_per_user),
            user_limit_policy: cli.user_limit_policy,
            max_rooms_per_connection: cli.max_rooms_per_connection,
            presence_list_max: cli.presence_list_max,
            max_head,
            max_headers: cli.max_headers,
            read_timeout: duration("read-timeout", &cli.read_timeout)?,
            idle_timeout: duration("idle-timeout", &cli.idle_timeout)?,
            write_timeout: duration("write-timeout", &cli.write_timeout)?,
            shutdown_grace: duration("shutdown-grace", &cli.shutdown_grace)?,
            backlog: cli.backlog,
            io_driver: cli.io_driver,
            log_format: cli.log_format,
            log_level: cli.log_level,
            access_log: cli.access_log,
        })
    }
}

impl Config {
    /// True when both route sets share one listener (api routes then need the
    /// key). Port 0 asks for two fresh ports, so it never means "shared".
    pub fn shared_listener(&self) -> bool {
        self.listen == self.api_listen && self.listen.port() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> ServerArgs {
        let mut argv = vec!["ssekify"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("arguments parse").server
    }

    #[test]
    fn public_api_listener_needs_a_key() {
        let err = Config::try_from(&cli(&["--api-listen", "0.0.0.0:8081"])).unwrap_err();
        assert!(err.to_string().starts_with("--api-listen:"), "{err}");
        let config = Config::try_from(&cli(&["--api-listen", "0.0.0.0:8081", "--api-key", "k"])).unwrap();
        assert_eq!(config.api_key.as_deref(), Some("k"));
    }

    #[test]
    fn tenants_are_listed_sorted_and_checked() {
        assert_eq!(Config::try_from(&cli(&[])).unwrap().tenants, None);
        let config = Config::try_from(&cli(&["--tenants", "globex, acme,acme"])).unwrap();
        assert_eq!(config.tenants, Some(vec!["acme".into(), "globex".into()]));
        let err = Config::try_from(&cli(&["--tenants", "a/b"])).unwrap_err();
        assert!(err.to_string().starts_with("--tenants:"), "{err}");
        assert!(Config::try_from(&cli(&["--tenants", ","])).is_err());
    }

    #[test]
    fn errors_name_the_flag() {
        let err = Config::try_from(&cli(&["--keep-alive", "soon"])).unwrap_err();
        assert!(err.to_string().starts_with("--keep-alive:"), "{err}");
        let err = Config::try_from(&cli(&["--max-queue-items", "0"])).unwrap_err();
        assert!(err.to_string().starts_with("--max-queue-items:"), "{err}");
    }

    #[test]
    fn idempotency_memory_is_a_size_of_at_least_64_kib() {
        assert_eq!(Config::try_from(&cli(&[])).unwrap().idempotency_max_bytes, 256 << 20);
        let config = Config::try_from(&cli(&["--idempotency-max-bytes", "64KiB"])).unwrap();
        assert_eq!(config.idempotency_max_bytes, 64 << 10);
        let err = Config::try_from(&cli(&["--idempotency-max-bytes", "1000"])).unwrap_err();
        assert_eq!(err.to_string(), "--idempotency-max-bytes: must be at least 64KiB");
        let err = Config::try_from(&cli(&["--idempotency-max-bytes", "lots"])).unwrap_err();
        assert!(err.to_string().starts_with("--idempotency-max-bytes: `lots`"), "{err}");
    }
}
