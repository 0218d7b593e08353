//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Egress enforcer for AI agents: kernel capture, TLS policy proxy, credential vault"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Daemon configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "AIRLOCK_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: eBPF capture, proxy, DNS, admin socket, metrics.
    Daemon(ConfigArg),
    /// Run CMD as agent NAME inside its cgroup, with placeholders and CA trust set.
    Run(RunArgs),
    /// Manage the secret vault.
    Secret {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Daemon health, attached programs, agents, counters.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The human-in-the-loop queue.
    Approvals {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: ApprovalAction,
    },
    /// The CA agents must trust.
    Ca {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: CaAction,
    },
    /// Detach the eBPF programs and remove the agents' cgroup root.
    Detach {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Internal: the daemon's eBPF loader. Loads and attaches the programs,
    /// prints the outcome as JSON and exits.
    #[command(name = "kernel-attach", hide = true)]
    KernelAttach(KernelAttachArgs),
}

#[derive(Debug, Args)]
pub struct KernelAttachArgs {
    #[arg(long)]
    pub cgroup_root: PathBuf,
    #[arg(long)]
    pub pin_dir: PathBuf,
    #[arg(long)]
    pub proxy_port: u16,
    #[arg(long)]
    pub dns_port: u16,
    /// The daemon's network namespace (SO_NETNS_COOKIE).
    #[arg(long)]
    pub netns_cookie: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The agent (its policy's `agent:` name).
    #[arg(long)]
    pub agent: String,
    /// Run as this user (name or uid).
    #[arg(long, conflicts_with = "allow_root")]
    pub user: Option<String>,
    /// Allow the agent to run as root (root can leave its cgroup and open raw sockets).
    #[arg(long)]
    pub allow_root: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretAction {
    /// Store a secret; the value is read from standard input.
    Set {
        name: String,
        /// Where the placeholder is swapped: bearer or basic (Authorization header), header (the
        /// header --header names, or any header), query (the query string); aws_sigv4 (value ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]);
        /// oauth2_client_credentials or github_app (value: YAML saying how to fetch the token; see README)
        #[arg(long, default_value = "bearer")]
        kind: String,
        /// The string agents use in place of the secret (default airlock-ph-NAME).
        #[arg(long)]
        placeholder: Option<String>,
        /// For --kind header: the one request header the secret is swapped into (e.g. x-api-key);
        /// without it, any header. Kept when the value is set again.
        #[arg(long)]
        header: Option<String>,
    },
    /// Names, kinds, versions and placeholders; never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm { name: String },
    /// Replace a secret's value (from stdin); the old one stays valid for the grace period.
    Rotate {
        name: String,
        /// Seconds the previous value stays valid (default: rotate_grace_secs of the config).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Validate policy files offline (default: the configured policy_dir).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Print the path of the CA certificate agents must trust.
    Path {
        /// Print the bundle (system roots + Airlock CA) instead.
        #[arg(long)]
        bundle: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalAction {
    /// Requests waiting for a human.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Let a held request through.
    Approve { id: String },
    /// Refuse a held request (the agent gets 403).
    Deny { id: String },
}
