//! The `ssekify` binary: command line → [`Setup`] → [`server::run`], or a
//! subcommand ([`Command`]): `sign`, `check-config`.

use std::time::SystemTime;

use clap::Parser;
use ssekify::auth::Authenticator;
use ssekify::config::{Cli, Command, ServerArgs};
use ssekify::setup::Setup;
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
        Some(Command::CheckConfig(args)) => match Setup::try_from(*args) {
            Ok(setup) => print!("{}", check::report(&setup)),
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
    let setup = match Setup::try_from(args) {
        Ok(setup) => setup,
        Err(error) => {
            eprintln!("ssekify: {error}");
            std::process::exit(2);
        }
    };
    let config = &setup.config;
    ssekify::log::init(config.log_level, config.log_format);
    if config.api_key.is_none() {
        ssekify::log!(Info, "api listener has no --api-key; it accepts any local caller", api = config.api_listen);
    }
    if let Some(tenants) = &setup.tenant_config {
        ssekify::log!(Info, "tenant config", summary = tenants.summary());
    }
    if matches!(setup.auth, Authenticator::None) {
        ssekify::log!(Warn, "subscriber auth is `none`: the userId query parameter is trusted (development mode)");
    } else {
        ssekify::log!(Info, "subscriber auth", mode = setup.auth.mode());
    }
    if let Some(warning) = match &setup.auth {
        Authenticator::Jwt(verifier) => verifier.warning(),
        _ => None,
    } {
        ssekify::log!(Warn, warning);
    }
    match server::run(setup) {
        Ok(status) => std::process::exit(status),
        Err(error) => {
            ssekify::log!(Error, "cannot start", error = error);
            std::process::exit(1);
        }
    }
}
