//! Entry point: read the configuration, start logging, run the command.

use std::process::ExitCode;

use clap::Parser;

use {{crate_name}}::cli::{self, Cli};
use {{crate_name}}::config::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(printed) = cli::without_settings(&cli) {
        println!("{printed}");
        return ExitCode::SUCCESS;
    }
    let (settings, warnings) = match Settings::load() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
{%- if opentelemetry %}
    let _traces = cli::init_logging(&cli);
{%- else %}
    cli::init_logging(&cli);
{%- endif %}
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    match cli::run(cli, settings) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
