//! The `ssekify` binary: command line → [`Config`] → [`server::run`].

use clap::Parser;
use ssekify::auth::Authenticator;
use ssekify::config::{Cli, Config};
use ssekify::server;

fn main() {
    let cli = Cli::parse();
    let config = match Config::try_from(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ssekify: {error}");
            std::process::exit(2);
        }
    };
    ssekify::log::init(config.log_level, config.log_format);
    if config.api_key.is_none() {
        ssekify::log!(Info, "api listener has no --api-key; it accepts any local caller", api = config.api_listen);
    }
    if matches!(config.auth, Authenticator::None) {
        ssekify::log!(Warn, "subscriber auth is `none`: the userId query parameter is trusted (development mode)");
    } else {
        ssekify::log!(Info, "subscriber auth", mode = config.auth.mode());
    }
    match server::run(config) {
        Ok(status) => std::process::exit(status),
        Err(error) => {
            ssekify::log!(Error, "cannot start", error = error);
            std::process::exit(1);
        }
    }
}
