//! Boots the instance: shard threads (pinned, one runtime each, io_uring with
//! epoll fallback), their SO_REUSEPORT listeners and accept loops, the signal
//! thread; then waits for the lifecycle to end and returns the exit status.
//!
//! Parts: [`connection`] (HTTP on one socket), [`access`] (its optional
//! access log), [`signals`] (SIGTERM/SIGINT → shutdown phases, SIGHUP →
//! reload), [`memory`] (freed memory back to the system after peaks),
//! [`events_sink`] (`--events-url`).

pub mod access;
pub mod connection;
pub mod events_sink;
pub mod memory;
pub mod signals;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};

use crate::api::{Role, Services};
use crate::bus::{self, Bus, BusSettings, BUS_INBOX_CAPACITY};
use crate::config::{Config, IoDriver};
use crate::setup::Setup;
use crate::shard::envelope::Envelope;
use crate::shard::inbox::{inbox, LocalInbox};
use crate::shard::lane::LocalLane;
use crate::shard::{heartbeat, watcher, writer, yielding, LifecycleEvent, ShardCtx, Shared, INBOX_CAPACITY};
use crate::sse::id::random_instance;
use connection::PendingSocket;

/// Submission queue entries per shard ring: enough for a burst of writes to
/// thousands of connections per loop turn without a forced submit.
const URING_ENTRIES: u32 = 4096;

/// Envelopes handled per inbox wake-up before other tasks get a turn.
const INBOX_BATCH: usize = 256;

/// Why the instance could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Where one shard listens.
#[derive(Clone, Copy)]
struct Addresses {
    public: SocketAddr,
    api: SocketAddr,
}

/// Runs the instance until shutdown; returns the process exit status.
pub fn run(setup: Setup) -> Result<i32, StartError> {
    let Setup { mut config, auth, redis, tenant_config, events_url } = setup;
    signals::block_in_this_thread();
    memory::fix_allocator_thresholds();
    refuse_taken_ports(&config)?;
    let open_files = raise_open_file_limit();
    if config.max_connections.is_none() {
        config.max_connections = NonZeroUsize::new(connection_limit(open_files));
    }
    let shard_count = config.shards.get();
    let (lifecycle_tx, lifecycle_rx) = mpsc::channel();
    let (inboxes, locals): (Vec<_>, Vec<_>) = (0..shard_count).map(|_| inbox(INBOX_CAPACITY)).unzip();
    let instance = random_instance();
    let refusals = crate::api::subscribe::render_refusal;
    let mut shared = Shared::new(config, auth, tenant_config, refusals, inboxes, instance, lifecycle_tx);
    let mut lanes = if redis.is_some() { shared.open_bus_lanes() } else { Vec::new() }.into_iter();
    let shared = Arc::new(shared);
    signals::spawn_watcher(shared.clone());
    if let Some(jwks) = shared.auth.jwks() {
        jwks.start().map_err(|e| StartError(format!("cannot spawn the JWKS thread: {e}")))?;
    }
    memory::spawn_trimmer(shared.clone()).map_err(|e| StartError(format!("cannot spawn the memory thread: {e}")))?;
    if let Some(endpoint) = events_url {
        events_sink::spawn(shared.clone(), endpoint)
            .map_err(|e| StartError(format!("cannot spawn the events sink thread: {e}")))?;
    }
    let bus = match redis {
        Some(url) => {
            let (inbox, local) = inbox(BUS_INBOX_CAPACITY);
            let config = &shared.config;
            let settings = BusSettings {
                channel: config.channel.clone(),
                tenants: config.tenants.clone(),
                timeout: config.bus_timeout,
                partitions: config.bus_partitions,
                history: config.bus_history,
                dedupe_window: config.idempotency_window,
            };
            let bus = Arc::new(Bus::new(inbox, settings, instance));
            crate::log!(Info, "starting the bus", redis = url, channel = config.channel);
            bus::client::spawn(shared.clone(), bus.clone(), local, url)
                .map_err(|e| StartError(format!("cannot spawn the bus thread: {e}")))?;
            Some(bus)
        }
        None => None,
    };

    let mut addresses = Addresses { public: shared.config.listen, api: shared.config.api_listen };
    let shared_listener = shared.config.shared_listener();
    let cores = if shared.config.pin_cores { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
    let mut driver = "";
    // With a bus, the instance is ready once its bus is live too (which may
    // come before the last shard listens, or long after).
    let mut bus_live = false;
    for (id, local) in locals.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let lane = lanes.next();
        let boot = ShardBoot { id, shared: shared.clone(), bus: bus.clone(), local, lane, addresses, shared_listener };
        spawn_shard(boot, core)?;
        loop {
            match lifecycle_rx.recv() {
                Ok(LifecycleEvent::Ready { public, api, driver: used, .. }) => {
                    // Shard 0 resolved port 0 (if asked); the others bind the same ports.
                    addresses = Addresses { public, api };
                    driver = used;
                    break;
                }
                Ok(LifecycleEvent::BusLive) => bus_live = true,
                Ok(LifecycleEvent::Failed(why)) => return Err(StartError(why)),
                _ => return Err(StartError(format!("shard {id} stopped during start-up"))),
            }
        }
    }
    let config = &shared.config;
    if config.shards.get() > 1 && driver == "epoll" {
        crate::log!(Info, "io_uring unavailable or disabled; using epoll");
    }
    crate::log!(
        Info,
        "ssekify listening",
        public = addresses.public,
        api = addresses.api,
        shards = shard_count,
        driver = driver,
        max_connections = config.max_connections.map_or(0, |n| n.get()),
        instance = format!("{:08x}", shared.instance),
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::config::COMMIT,
    );
    let ready = || crate::log!(Info, "ssekify ready", public = addresses.public, api = addresses.api);
    if bus.is_none() || bus_live {
        ready();
    } else {
        crate::log!(Info, "waiting for the bus before ready (/readyz answers 503 until then)");
    }
    let mut drained = 0;
    loop {
        match lifecycle_rx.recv() {
            Ok(LifecycleEvent::BusLive) if !bus_live => {
                bus_live = true;
                ready();
            }
            Ok(LifecycleEvent::Drained) => {
                drained += 1;
                if drained == shard_count {
                    // Let in-flight api answers (the shutdown route's 202) leave.
                    std::thread::sleep(Duration::from_millis(50));
                    crate::log!(Info, "shutdown complete");
                    return Ok(0);
                }
            }
            Ok(LifecycleEvent::Exit(status)) => return Ok(status),
            Ok(LifecycleEvent::Failed(why)) => {
                crate::log!(Error, "shard failed", error = why);
                return Ok(1);
            }
            Ok(LifecycleEvent::Ready { .. } | LifecycleEvent::BusLive) => {}
            Err(_) => return Ok(1),
        }
    }
}

/// Every subscriber is a descriptor: lift the soft limit (often 1024 in
/// containers and shells) to the hard one the administrator allows.
/// Returns the soft limit in force afterwards.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to an rlimit for the calls' duration.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur >= limit.rlim_max {
            return limit.rlim_cur;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            crate::log!(Debug, "raised the open-file limit", from = soft, to = limit.rlim_max);
            return limit.rlim_max;
        }
        soft
    }
}

/// The default of `--max-connections`: the open-file limit less a reserve
/// (a tenth, at least 128 and at most 4096), so that when subscribers take
/// every socket they may, the api listener, the bus's Redis connections,
/// auth webhooks and health checks still get descriptors.
fn connection_limit(open_files: u64) -> usize {
    let reserve = (open_files / 10).clamp(128, 4096);
    open_files.saturating_sub(reserve).max(1) as usize
}

/// Refuses to start beside another process on our ports. The shards bind
/// with SO_REUSEPORT, which would let a second instance bind too and take a
/// share of the subscribers (its publishes then reach nobody on the first).
/// A plain bind fails wherever anyone already listens.
fn refuse_taken_ports(config: &Config) -> Result<(), StartError> {
    let mut ports = vec![(config.listen, "--listen")];
    if !config.shared_listener() {
        ports.push((config.api_listen, "--api-listen"));
    }
    for (addr, flag) in ports.into_iter().filter(|(addr, _)| addr.port() != 0) {
        if let Err(error) = std::net::TcpListener::bind(addr) {
            let why = if error.kind() == std::io::ErrorKind::AddrInUse {
                "another process already listens there".to_owned()
            } else {
                error.to_string()
            };
            return Err(StartError(format!("cannot listen on {addr} ({flag}): {why}")));
        }
    }
    Ok(())
}

fn spawn_shard(boot: ShardBoot, core: Option<core_affinity::CoreId>) -> Result<(), StartError> {
    let id = boot.id;
    let thread = std::thread::Builder::new().name(format!("shard-{id}"));
    let spawned = thread.spawn(move || {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core) {
                crate::log!(Warn, "could not pin shard to its core", shard = id, core = core.id);
            }
        }
        let lifecycle = boot.shared.lifecycle.clone();
        let driver = boot.shared.config.io_driver;
        let result = if driver.tries_uring() {
            match build_uring() {
                Ok(mut runtime) => {
                    runtime.block_on(boot.run("uring"));
                    Ok(())
                }
                Err(error) if driver == IoDriver::Auto => {
                    crate::log!(Warn, "io_uring runtime failed; falling back to epoll", error = error);
                    build_epoll().map(|mut runtime| runtime.block_on(boot.run("epoll")))
                }
                Err(error) => Err(error),
            }
        } else {
            build_epoll().map(|mut runtime| runtime.block_on(boot.run("epoll")))
        };
        if let Err(error) = result {
            let _ = lifecycle.send(LifecycleEvent::Failed(format!("shard {id}: cannot start its runtime: {error}")));
        }
    });
    spawned.map(drop).map_err(|e| StartError(format!("cannot spawn shard {id}: {e}")))
}

/// An io_uring runtime whose completions' task work runs only when the shard
/// thread enters the kernel to wait (`DEFER_TASKRUN`, with `SINGLE_ISSUER` and
/// `COOP_TASKRUN`), instead of interrupting it: a third less CPU per
/// short-lived subscriber in the churn scenario (48 → 33 µs per subscribe).
/// Kernels before 6.1 refuse those flags; the ring is then built without them.
fn build_uring() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let deferred = || {
        let mut setup = io_uring::IoUring::builder();
        setup.setup_coop_taskrun().setup_single_issuer().setup_defer_taskrun();
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .uring_builder(setup)
            .enable_timer()
            .build()
    };
    deferred().or_else(|error| {
        crate::log!(Debug, "io_uring without deferred task work", error = error);
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(URING_ENTRIES).enable_timer().build()
    })
}

fn build_epoll() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()
}

/// Everything a shard thread needs to start serving.
struct ShardBoot {
    id: usize,
    shared: Arc<Shared>,
    bus: Option<Arc<Bus>>,
    local: LocalInbox<Envelope>,
    lane: Option<LocalLane>,
    addresses: Addresses,
    shared_listener: bool,
}

impl ShardBoot {
    async fn run(self, driver: &'static str) {
        let ShardBoot { id, shared, bus, mut local, lane, addresses, shared_listener } = self;
        let services = Rc::new(Services { bus });
        let lifecycle = shared.lifecycle.clone();
        let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(shared.config.backlog);
        let bind = |addr: SocketAddr, what: &str| {
            let listener = TcpListener::bind_with_config(addr, &opts)
                .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
            set_nodelay_inherited(&listener);
            Ok(listener)
        };
        let listeners = if shared_listener {
            bind(addresses.public, "--listen and --api-listen").map(|l| vec![(l, Role::Both)])
        } else {
            bind(addresses.public, "--listen").and_then(|public| {
                let api = bind(addresses.api, "--api-listen")?;
                Ok(vec![(public, Role::Public), (api, Role::Api)])
            })
        };
        let listeners = match listeners {
            Ok(listeners) => listeners,
            Err(why) => {
                let _ = lifecycle.send(LifecycleEvent::Failed(why));
                return;
            }
        };
        let local_addr = |index: usize| listeners[index].0.local_addr().unwrap_or(addresses.public);
        let public = local_addr(0);
        let api = if shared_listener { public } else { local_addr(1) };
        let sockets = ShardCtx::new(id, shared, lane).and_then(|ctx| ctx.sockets.waiter().map(|waiter| (ctx, waiter)));
        let (ctx, waiter) = match sockets {
            Ok(started) => started,
            Err(error) => {
                let _ =
                    lifecycle.send(LifecycleEvent::Failed(format!("shard {id}: cannot make its epoll set: {error}")));
                return;
            }
        };
        monoio::spawn(heartbeat::run(ctx.clone()));
        monoio::spawn(writer::run(ctx.clone(), driver == "uring"));
        monoio::spawn(watcher::run(ctx.clone(), waiter));
        for (listener, role) in listeners {
            monoio::spawn(accept_loop(ctx.clone(), services.clone(), listener, role));
        }
        let _ = lifecycle.send(LifecycleEvent::Ready { public, api, driver });
        let mut batch = Vec::with_capacity(INBOX_BATCH);
        let mut budget = yielding::Budget::default();
        let mut lane_backlog = false;
        loop {
            if lane_backlog {
                local.take_ready(&mut batch, INBOX_BATCH);
            } else {
                local.recv_batch(&mut batch, INBOX_BATCH).await;
            }
            // The bus's lane at every turn: some of it waits without a doorbell.
            lane_backlog = ctx.take_lane(INBOX_BATCH);
            let full = batch.len() == INBOX_BATCH || lane_backlog;
            for envelope in batch.drain(..) {
                ctx.handle(envelope);
            }
            // While envelopes keep coming (full batches), the inbox never
            // waits and the runtime never reaps completions: the shard's
            // streams and requests get a turn once this ran a slice of time.
            if !full {
                budget.reset();
            } else if budget.overdue() {
                yielding::yield_now().await;
            }
        }
    }
}

/// Frames and answers go out as soon as they are written (one frame is often
/// all there is): TCP_NODELAY, set once on the listener because Linux copies
/// it to every accepted socket, which saves a syscall per connection.
fn set_nodelay_inherited(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Accepts connections for the life of the shard. Public sockets beyond
/// `--max-connections` are answered 503 and closed at once.
async fn accept_loop(ctx: Rc<ShardCtx>, services: Rc<Services>, listener: TcpListener, role: Role) {
    let mut failures = AcceptFailures::default();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let pending = match role {
                    Role::Api => Some(PendingSocket::uncounted()),
                    Role::Public | Role::Both => PendingSocket::claim(&ctx),
                };
                match pending {
                    Some(pending) => {
                        monoio::spawn(connection::serve(ctx.clone(), services.clone(), stream, role, pending));
                    }
                    None => {
                        monoio::spawn(connection::at_capacity(ctx.clone(), stream));
                    }
                }
            }
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                failures.report(ctx.id, &error);
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Logs failing accepts at most once per [`ACCEPT_LOG_EVERY`], with how many
/// failed since: descriptors running out must not flood the log.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

/// Least time between two "accept failed" lines of one listener.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptFailures {
    fn report(&mut self, shard: usize, error: &std::io::Error) {
        self.unlogged += 1;
        if self.last_logged.is_some_and(|at| at.elapsed() < ACCEPT_LOG_EVERY) {
            return;
        }
        crate::log!(Warn, "accept failed", shard = shard, error = error, failures = self.unlogged);
        self.last_logged = Some(std::time::Instant::now());
        self.unlogged = 0;
    }
}
