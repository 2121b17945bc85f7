//! The `ssekify` binary: command line → [`Config`] → [`server::run`], or a
//! subcommand ([`Command`]): `sign`, `check-config`.

use std::time::SystemTime;

use clap::Parser;
use ssekify::auth::Authenticator;
use ssekify::config::{Cli, Command, Config, ServerArgs};
use ssekify::{check, server, sign};

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Sign(args)) => match sign::url(&args, SystemTime::now()) {
            Ok(url) => println!("{url}"),
            Err(error) => {
                eprintln!("ssekify sign: {error}");
                std::process::exit(2);
            }
        },
        Some(Command::CheckConfig(args)) => match Config::try_from(*args) {
            Ok(config) => print!("{}", check::report(&config)),
            Err(error) => {
                eprintln!("ssekify check-config: {error}");
                std::process::exit(2);
            }
        },
        None => serve(cli.server),
    }
}

/// Runs the server on `args` until it stops; exits with its status.
fn serve(args: ServerArgs) {
    let config = match Config::try_from(args) {
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
    if let Some(tenants) = &config.tenant_config {
        ssekify::log!(Info, "tenant config", summary = tenants.summary());
    }
    if matches!(config.auth, Authenticator::None) {
        ssekify::log!(Warn, "subscriber auth is `none`: the userId query parameter is trusted (development mode)");
    } else {
        ssekify::log!(Info, "subscriber auth", mode = config.auth.mode());
    }
    if let Some(warning) = match &config.auth {
        Authenticator::Jwt(verifier) => verifier.warning(),
        _ => None,
    } {
        ssekify::log!(Warn, warning);
    }
    match server::run(config) {
        Ok(status) => std::process::exit(status),
        Err(error) => {
            ssekify::log!(Error, "cannot start", error = error);
            std::process::exit(1);
        }
    }
}
