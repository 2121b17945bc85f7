//! The `ssekify` binary: command line → [`Config`] → [`server::run`], or a
//! subcommand ([`Command`]).

use std::time::SystemTime;

use clap::Parser;
use ssekify::auth::Authenticator;
use ssekify::config::{Cli, Command, Config};
use ssekify::{server, sign};

fn main() {
    let mut cli = Cli::parse();
    if let Some(Command::Sign(args)) = cli.command.take() {
        match sign::url(&args, SystemTime::now()) {
            Ok(url) => println!("{url}"),
            Err(error) => {
                eprintln!("ssekify sign: {error}");
                std::process::exit(2);
            }
        }
        return;
    }
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
