//! The `bastion` binary: parses the command line, loads the config, starts logging, calls the
//! library, and maps the outcome to an exit code (0 ok, 1 failing checks or a runtime error,
//! 2 a config or usage error).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use anyhow::Context;
use bastion_agent::agent::{self, Agent, AgentOptions, Role};
use bastion_agent::config::Config;
use bastion_agent::report;
use bastion_agent::telemetry::{self, LogFormat};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc, with the settings of `.cargo/config.toml`: a probe allocates on one thread and
/// frees on another, which glibc's malloc paid for in CPU (5 to 15 % more per probe) and in
/// memory it kept after a scrape (about 35 MB at 10,000 checks). ARCHITECTURE.md says more.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bastion",
    version,
    long_version = LONG_VERSION,
    about = "Probes the services it can reach and reports honest latency"
)]
struct Cli {
    /// Log line format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: schedule the checks, probe, serve metrics and the API.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Which components to run: `all` in one process, or a `checker` or a `runner` of a
        /// NATS deployment.
        #[arg(long, value_enum, default_value = "all", env = "BASTION_ROLE")]
        role: RoleArg,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Check a config file; exit 0 when valid, 2 with the error otherwise.
    Validate(ConfigArg),
    /// Run each check once, now, and print the results; exit 0 if all pass, 1 if any fails.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Run only the check with this name.
        #[arg(long)]
        check: Option<String>,
        /// Print one CheckResult JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Run the checks on the runners of the NATS bus instead of in this process.
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Ask a running agent whether it is alive (for Docker's HEALTHCHECK, where there is no
    /// curl); exit 0 when it answers 200, 1 otherwise.
    Healthcheck {
        /// The endpoint to ask.
        #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
        /// Accept any certificate (an agent serving HTTPS with a self-signed one).
        #[arg(long)]
        insecure: bool,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a shell completion script, e.g. `bastion completions bash >
    /// /etc/bash_completion.d/bastion` (packages install them for bash, zsh and fish).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page bastion(1), or write one page per command into a directory.
    Man {
        /// Write bastion.1, bastion-run.1, ... into this directory instead of printing bastion(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The configuration file's format.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Notifications: check a notifier's wiring before the first outage.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Print the [[checks]] that do what Prometheus does through blackbox_exporter's /probe:
    /// the modules of BLACKBOX_YML applied to the /probe jobs of a Prometheus config
    /// (--prometheus) or to a file_sd targets file (--targets, with --module).
    ImportBlackbox {
        /// blackbox_exporter's module file.
        blackbox_yml: PathBuf,
        /// A Prometheus config: every job whose metrics_path is /probe, its static targets,
        /// its params.module and its scrape_interval.
        #[arg(long, value_name = "FILE", conflicts_with = "targets")]
        prometheus: Option<PathBuf>,
        /// A file_sd targets file (`- targets: [...]`); a group's `module` label picks its module.
        #[arg(long, value_name = "FILE", required_unless_present = "prometheus")]
        targets: Option<PathBuf>,
        /// The module of --targets' groups without a `module` label.
        #[arg(long, default_value = "http_2xx")]
        module: String,
        /// The interval of checks whose job names no scrape_interval.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema (draft 2020-12) of the config file: every section and key with
    /// its description, type, default and range, for editors (Even Better TOML, the YAML
    /// language server) and CI. config/bastion.schema.json in the source is this output.
    Schema,
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// Send one test notification to a notifier, once; exit 0 with the receiver's answer when
    /// it took it, 1 with the reason when not, 2 for a config error or an unknown notifier.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// The `name` of the [[notifiers]] entry.
        #[arg(long)]
        notifier: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    All,
    Checker,
    Runner,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::All => Role::All,
            RoleArg::Checker => Role::Checker,
            RoleArg::Runner => Role::Runner,
        }
    }
}

#[derive(Args)]
struct BusArgs {
    /// Exit with an error when no NATS server answers within this long at start-up (e.g.
    /// `30s`), instead of retrying forever. Overrides bus.nats.connect_timeout.
    #[arg(long, value_parser = humantime::parse_duration)]
    bus_connect_timeout: Option<Duration>,
}

#[derive(Args)]
struct ConfigArg {
    /// The config file (TOML; .yaml/.yml files are read as YAML).
    #[arg(long, short = 'c', env = "BASTION_CONFIG")]
    config: PathBuf,
}

/// Writes to stderr, ignoring failure: `eprintln!` panics when stderr is a closed pipe, and
/// a message nobody can read must not turn an exit code into a panic's 101.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes to stdout, ignoring failure (`bastion once | head -1` closes the pipe early).
macro_rules! say_out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = write!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// `bastion --version`: the version, the git commit and the target it was built for (build.rs).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("BASTION_GIT_COMMIT"),
    "\ntarget: ",
    env!("BASTION_TARGET"),
);

const EXIT_FAILING: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the command line definition: nothing to load, no runtime needed.
    match cli.command {
        Command::Completions { shell } => return completions_command(shell),
        Command::Man { dir } => return man_command(dir.as_deref()),
        Command::Config {
            command: ConfigCommand::Schema,
        } => return schema_command(),
        _ => {}
    }
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say_err!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILING);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Validate(arg) => validate_command(&arg.config),
            Command::Once {
                config,
                check,
                json,
                remote,
                bus,
            } => {
                let remote = remote.then_some(bus.bus_connect_timeout);
                once_command(&config.config, check.as_deref(), json, remote).await
            }
            Command::Healthcheck {
                url,
                insecure,
                timeout,
            } => match agent::healthcheck(&url, insecure, timeout).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    say_err!("unhealthy: {error}");
                    ExitCode::from(EXIT_FAILING)
                }
            },
            Command::Run {
                config: path,
                role,
                bus,
            } => run_command(path.config, role, bus).await,
            // Answered above, before logging and the runtime start.
            Command::Completions { .. } | Command::Man { .. } | Command::Config { .. } => {
                ExitCode::SUCCESS
            }
            Command::Notify {
                command: NotifyCommand::Test { config, notifier },
            } => notify_test_command(&config.config, &notifier).await,
            Command::ImportBlackbox {
                blackbox_yml,
                prometheus,
                targets,
                module,
                interval,
            } => import_blackbox_command(
                &blackbox_yml,
                prometheus.as_deref(),
                targets.as_deref(),
                &module,
                interval,
            ),
        }
    })
}

/// `bastion completions SHELL`.
fn completions_command(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bastion", &mut script);
    say_out!("{}", String::from_utf8_lossy(&script));
    ExitCode::SUCCESS
}

/// `bastion config schema`.
fn schema_command() -> ExitCode {
    match serde_json::to_string_pretty(&bastion_agent::config::json_schema::json_schema()) {
        Ok(schema) => {
            say_out!("{schema}\n");
            ExitCode::SUCCESS
        }
        Err(error) => {
            say_err!("error: cannot render the schema: {error}");
            ExitCode::from(EXIT_FAILING)
        }
    }
}

/// `bastion man [--dir DIR]`.
fn man_command(dir: Option<&Path>) -> ExitCode {
    let command = Cli::command();
    let outcome = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command, dir))
            .map_err(|error| format!("cannot write man pages into {}: {error}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map(|()| say_out!("{}", String::from_utf8_lossy(&page)))
                .map_err(|error| format!("cannot render the man page: {error}"))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            say_err!("error: {error}");
            ExitCode::from(EXIT_FAILING)
        }
    }
}

/// `bastion import-blackbox`: the checks, validated as a config of their own, on stdout.
fn import_blackbox_command(
    blackbox_yml: &Path,
    prometheus: Option<&Path>,
    targets: Option<&Path>,
    module: &str,
    interval: Duration,
) -> ExitCode {
    use bastion_agent::config::blackbox::BlackboxModules;
    use bastion_agent::config::blackbox_import as import;
    let imported = (|| {
        let modules = BlackboxModules::load(blackbox_yml)?;
        let (source, found) = match (prometheus, targets) {
            (Some(file), _) => (file, import::targets_from_prometheus(file)?),
            (None, Some(file)) => (file, import::targets_from_file(file, module)?),
            (None, None) => {
                return Err(import::ImportError::Targets {
                    path: blackbox_yml.to_path_buf(),
                    reason: "say where the targets are: --prometheus FILE or --targets FILE"
                        .to_string(),
                })
            }
        };
        if found.is_empty() {
            return Err(import::ImportError::NoTargets(source.to_path_buf()));
        }
        let checks = import::checks(&modules, &found, interval)?;
        Ok(import::to_toml(
            &checks,
            &format!("{} and {}", blackbox_yml.display(), source.display()),
        ))
    })();
    let text = match imported {
        Ok(text) => text,
        Err(error) => {
            say_err!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // What is printed must be a config bastion accepts.
    if let Err(error) = bastion_agent::validate::parse(
        &text,
        bastion_agent::config::Format::Toml,
        Path::new("<imported checks>"),
    ) {
        return config_error(&error);
    }
    say_out!("{text}");
    ExitCode::SUCCESS
}

/// `bastion validate`.
fn validate_command(path: &Path) -> ExitCode {
    let loaded = bastion_agent::validate::load(path).and_then(|config| {
        bastion_agent::validate::notifiers(path, &config)?;
        Ok(config)
    });
    match loaded {
        Ok(config) => {
            let modules = config.blackbox.as_ref().map_or(String::new(), |blackbox| {
                format!(
                    ", {} blackbox module(s) from {}",
                    blackbox.modules.len(),
                    blackbox.path.display()
                )
            });
            say_out!(
                "{}: valid, {} check(s){modules}\n",
                path.display(),
                config.checks.len()
            );
            ExitCode::SUCCESS
        }
        Err(error) => config_error(&error),
    }
}

/// `bastion once`; `remote` as for [`once`].
async fn once_command(
    path: &Path,
    check: Option<&str>,
    json: bool,
    remote: Option<Option<Duration>>,
) -> ExitCode {
    let config = match bastion_agent::validate::load(path) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    match once(&config, check, json, remote).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILING),
        Err(error) => {
            say_err!("error: {}", chain_text(&error));
            // Naming a check that is not there is a usage error; anything else
            // went wrong while running.
            let usage = matches!(
                error.downcast_ref::<agent::AgentError>(),
                Some(
                    agent::AgentError::NoSuchCheck(_)
                        | agent::AgentError::InvalidCheck(..)
                        | agent::AgentError::RemoteNeedsNats
                )
            );
            ExitCode::from(if usage { EXIT_CONFIG } else { EXIT_FAILING })
        }
    }
}

/// `bastion run`.
async fn run_command(config_path: PathBuf, role: RoleArg, bus: BusArgs) -> ExitCode {
    let config = match bastion_agent::validate::load(&config_path) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    // The notifiers' secret files: a scheduling agent notifies, a runner never does.
    // ... and the history database it keeps.
    if !matches!(role, RoleArg::Runner) {
        if let Err(error) = bastion_agent::validate::notifiers(&config_path, &config)
            .and_then(|()| bastion_agent::validate::history(&config_path, &config))
        {
            return config_error(&error);
        }
    }
    let options = AgentOptions {
        role: role.into(),
        bus_connect_timeout: bus.bus_connect_timeout,
        config_path: Some(config_path),
    };
    match run(config, options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            say_err!("error: {}", chain_text(&error));
            let usage = matches!(
                error.downcast_ref::<agent::AgentError>(),
                Some(agent::AgentError::RoleNeedsNats(_) | agent::AgentError::SavedState(_))
            );
            ExitCode::from(if usage { EXIT_CONFIG } else { EXIT_FAILING })
        }
    }
}

/// `bastion notify test`.
async fn notify_test_command(path: &Path, notifier: &str) -> ExitCode {
    use bastion_agent::notify::{send_test, NotifyError};
    let config = match bastion_agent::validate::load(path) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    match send_test(&config, notifier).await {
        Ok(answer) => {
            say_out!(
                "{notifier}: delivered; the receiver answered {}\n",
                answer.0
            );
            ExitCode::SUCCESS
        }
        Err(error @ NotifyError::TestFailed { .. }) => {
            say_err!("error: {error}");
            ExitCode::from(EXIT_FAILING)
        }
        Err(error) => {
            say_err!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// An error and its causes, each once: `{:#}` writes every cause after its parent, and a
/// library error that says its cause in its own message (`bus: {0}`, or mid-sentence as in
/// `cannot listen on X: {0}; set agent.listen ...`) would repeat it.
fn chain_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut parent = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !parent.is_empty() && parent.contains(&cause) {
            continue;
        }
        parent.clone_from(&cause);
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Prints every mistake found, one per line, and exits 2.
fn config_error(error: &bastion_agent::config::ConfigError) -> ExitCode {
    let all = error.each();
    for one in &all {
        // A message of several lines (a regex parser's) stays visibly one error.
        say_err!("error: {}", one.to_string().replace('\n', "\n    "));
    }
    if all.len() > 1 {
        say_err!("{} errors in the config", all.len());
    }
    ExitCode::from(EXIT_CONFIG)
}

/// `remote`: run on the bus's runners, with this connect timeout (None: the default).
async fn once(
    config: &Config,
    only: Option<&str>,
    json: bool,
    remote: Option<Option<Duration>>,
) -> anyhow::Result<bool> {
    let results = match remote {
        Some(connect_timeout) => agent::run_remote(config, only, connect_timeout).await?,
        None => agent::run_once(config, only).await?,
    };
    let mut out = String::new();
    if json {
        for result in &results {
            out.push_str(&serde_json::to_string(result).context("encoding a result")?);
            out.push('\n');
        }
    } else {
        out = report::table(&results);
    }
    say_out!("{out}");
    Ok(results.iter().all(|result| result.passing))
}

async fn run(config: Config, options: AgentOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (reloader_sender, reloader) = tokio::sync::watch::channel(None);
    tokio::spawn(watch_signals(shutdown.clone(), reloader));
    // Start-up may wait for NATS; a signal meanwhile stops it cleanly.
    let agent = tokio::select! {
        built = Agent::build_with(config, options) => built.context("starting bastion")?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    reloader_sender.send_replace(agent.reloader());
    agent.run(shutdown).await.context("running bastion")
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once. SIGHUP reloads
/// the config (once the agent is built; before that there is nothing to reload).
async fn watch_signals(
    shutdown: CancellationToken,
    reloader: tokio::sync::watch::Receiver<Option<std::sync::Arc<bastion_agent::reload::Reloader>>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop bastion with SIGKILL");
        return;
    };
    let mut received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                let current = reloader.borrow().clone();
                match current {
                    // The outcome is logged and counted by the reloader.
                    Some(reloader) => {
                        tokio::spawn(async move {
                            let _ = reloader.reload().await;
                        });
                    }
                    None => tracing::warn!("SIGHUP during start-up: nothing to reload yet"),
                }
                continue;
            }
        }
        received += 1;
        if received > 1 {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
        shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("inner trouble")]
    struct Inner;

    /// Says its cause in its message and gives it as its source, as `AgentError::Bus` does.
    #[derive(Debug, thiserror::Error)]
    #[error("bus: {0}")]
    struct Saying(#[from] Inner);

    /// Says its cause mid-sentence, as `AgentError::Listen` does.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen: {0}; set agent.listen to a free address")]
    struct Amid(#[source] Inner);

    #[test]
    fn a_cause_its_parent_already_says_is_written_once_and_others_are_kept() {
        let repeated = anyhow::Error::from(Saying(Inner)).context("starting bastion");
        assert_eq!(
            super::chain_text(&repeated),
            "starting bastion: bus: inner trouble"
        );
        let plain = anyhow::Error::from(Inner).context("starting bastion");
        assert_eq!(super::chain_text(&plain), "starting bastion: inner trouble");
        let amid = anyhow::Error::from(Amid(Inner)).context("starting bastion");
        assert_eq!(
            super::chain_text(&amid),
            "starting bastion: cannot listen: inner trouble; set agent.listen to a free address"
        );
    }
}
