//! SIGTERM and SIGINT → shutdown phases, SIGHUP → reload, in one place.
//!
//! The signals are blocked in every thread (the mask is inherited from the
//! main thread before any other starts) and received synchronously by one
//! watcher thread with `sigwait`, so no handler runs in async-signal context.
//! First SIGTERM/SIGINT: graceful shutdown over `--shutdown-grace`. Second:
//! exit now. SIGHUP re-reads what can change without a restart: the keys of
//! `--jwks-file` (a bad file is logged and the keys in use kept), or a fetch
//! of `--jwks-url`, and `--tenant-config` (a bad file is logged and the config
//! in force kept; a good one reaches every shard as an envelope, so no shard
//! ever takes a lock for it); with nothing to reload it says so in the log.
//! Nothing connected is touched.

use std::path::Path;
use std::sync::Arc;

use crate::shard::envelope::Envelope;
use crate::shard::{LifecycleEvent, Shared};
use crate::tenants::TenantConfig;

/// Exit status when a second signal cuts the grace period short.
pub const FORCED_EXIT: i32 = 1;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in the calling thread and in threads it spawns later.
pub fn block_in_this_thread() {
    let set = signal_set();
    // SAFETY: a valid set; the old mask is not needed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts the thread that turns signals into lifecycle steps.
pub fn spawn_watcher(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let set = signal_set();
        let mut received = 0;
        loop {
            let mut signal = 0;
            // SAFETY: a valid set and out-pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            if signal == libc::SIGHUP {
                reload(&shared);
                continue;
            }
            received += 1;
            let name = if signal == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
            if received > 1 {
                crate::log!(Warn, "second signal: exiting now", signal = name);
                let _ = shared.lifecycle.send(LifecycleEvent::Exit(FORCED_EXIT));
                continue;
            }
            let grace = shared.config.shutdown_grace;
            crate::log!(Info, "shutting down", reason = name, grace_ms = grace.as_millis());
            if let Some(order) = shared.begin_shutdown(grace, Some(crate::api::admin::SHUTDOWN_EVENT)) {
                for shard in 0..shared.shard_count() {
                    shared.send_blocking(shard, order.envelope());
                }
            }
        }
    });
}

/// SIGHUP: reloads what the configuration lets change while running.
fn reload(shared: &Shared) {
    let jwks = shared.auth.jwks();
    if let Some(jwks) = jwks {
        crate::log!(Info, "SIGHUP: reloading the JWKS", source = jwks.shown());
        jwks.reload();
    }
    if let Some(tenants) = &shared.tenant_config {
        reload_tenants(shared, tenants.path.as_deref().unwrap_or(Path::new("")));
    }
    if jwks.is_none() && shared.tenant_config.is_none() {
        crate::log!(Info, "SIGHUP: nothing to reload (no --jwks-file, --jwks-url or --tenant-config)");
    }
}

/// Re-reads `--tenant-config` and hands the new config to every shard,
/// which puts it in force for new connections and publishes; a file that
/// does not validate is refused and the config in force kept.
fn reload_tenants(shared: &Shared, path: &Path) {
    match TenantConfig::load(path, shared.config.api_key.as_deref()) {
        Ok(config) => {
            let config = Arc::new(config);
            for shard in 0..shared.shard_count() {
                shared.send_blocking(shard, Envelope::TenantConfig(config.clone()));
            }
            crate::log!(
                Info,
                "tenant config reloaded",
                tenants = config.tenants().len(),
                file = path.display().to_string()
            );
        }
        Err(error) => {
            crate::log!(Error, "tenant config refused; the one in force is kept", error = error);
        }
    }
}
