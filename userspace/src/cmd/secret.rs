use std::{
    io::{IsTerminal as _, Read as _},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{ConfigArg, SecretAction},
    daemon::{AdminError, AdminRequest},
    secret::Secret,
    vault::{SecretKind, Vault},
};

pub fn run(arg: &ConfigArg, action: SecretAction) -> anyhow::Result<ExitCode> {
    let (config, path) = super::load_config(arg)?;
    // The master key, and the value `set` and `rotate` read, are in memory
    // from here on.
    crate::memory_lock::lock_as_configured(config.lock_memory, &path)?;
    let vault = Vault::open(&config.state_dir)?;
    match action {
        SecretAction::Set {
            name,
            kind,
            placeholder,
            header,
        } => {
            let kind: SecretKind = kind.parse()?;
            let value = read_value(&name, kind)?;
            let info = vault.set_with_header(
                &name,
                kind,
                placeholder.as_deref(),
                header.as_deref(),
                value,
            )?;
            tell_daemon(&config.admin_socket);
            let only = info
                .header
                .as_deref()
                .map(|h| format!(", in header {h} only"))
                .unwrap_or_default();
            println!(
                "stored {} ({}{only}, version {}); agents use the placeholder {}",
                info.name, info.kind, info.version, info.placeholder
            );
            if kind == SecretKind::Header && info.header.is_none() {
                // Any header is where an agent could plant the placeholder
                // for a server to keep and show (a note, a label).
                eprintln!(
                    "note: {} is swapped into any request header; to refuse it in all but one, set it again with --header NAME (e.g. --header x-api-key)",
                    info.name
                );
            }
        }
        SecretAction::List { json } => {
            let list = vault.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("(no secrets)");
            } else {
                println!(
                    "{:<32} {:<26} {:>7}  PLACEHOLDER",
                    "NAME", "KIND", "VERSION"
                );
                for s in list {
                    let kind = match &s.header {
                        Some(header) => format!("{} ({header})", s.kind),
                        None => s.kind.to_string(),
                    };
                    println!(
                        "{:<32} {:<26} {:>7}  {}",
                        s.name, kind, s.version, s.placeholder
                    );
                }
            }
        }
        SecretAction::Rm { name } => {
            vault.remove(&name)?;
            tell_daemon(&config.admin_socket);
            println!("removed {name}");
        }
        SecretAction::Rotate { name, grace_secs } => {
            let grace = Duration::from_secs(grace_secs.unwrap_or(config.rotate_grace_secs));
            let Some(kind) = vault
                .list()?
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| s.kind)
            else {
                bail!("no secret named {name:?} to rotate (`airlock secret list` shows them)");
            };
            let value = read_value(&name, kind)?;
            let info = vault.rotate(&name, value, grace)?;
            tell_daemon(&config.admin_socket);
            println!(
                "rotated {} to version {}; the previous value stays valid for {}s",
                info.name,
                info.version,
                grace.as_secs()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes the change hold from the daemon's next request. A daemon that is
/// not running reads the vault when it starts; one that cannot be told
/// still sees the file change within a second.
fn tell_daemon(admin_socket: &Path) {
    match crate::daemon::admin_request(admin_socket, &AdminRequest::VaultChanged) {
        Ok(answer) if answer.get("ok").is_some() => {}
        Err(AdminError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Ok(answer) => eprintln!(
            "warning: the daemon did not confirm that it re-read the vault ({answer}); it sees the change within a second"
        ),
        Err(err) => eprintln!(
            "warning: could not tell the daemon: {err}; it sees the change within a second"
        ),
    }
}

/// The value comes from stdin, never argv (argv is world-readable in /proc).
/// At a terminal it is typed unseen, and ends at Enter.
fn read_value(name: &str, kind: SecretKind) -> anyhow::Result<Secret> {
    let mut buf = if std::io::stdin().is_terminal() {
        if matches!(
            kind,
            SecretKind::Oauth2ClientCredentials | SecretKind::GithubApp
        ) {
            bail!(
                "the value of a {kind} secret is a YAML document of several lines: give it on standard input, from a file (`... < {name}.yaml`) or a heredoc (README, Secret kinds)"
            );
        }
        super::hidden_line::read(&format!(
            "value of secret {name} (not shown; Enter ends it): "
        ))
        .context("reading the secret from the terminal")?
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the secret from standard input")?;
        buf
    };
    // One trailing newline from `echo` or a heredoc is not part of it.
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.is_empty() {
        bail!(
            "no secret on standard input (e.g. `printf %s \"$TOKEN\" | airlock secret set NAME`)"
        );
    }
    Ok(Secret::new(buf))
}
