//! `airlock run --agent NAME [--user U | --allow-root] -- CMD...`
//!
//! Joins the agent's cgroup *before* exec, so that every socket the command
//! ever opens is born inside it (a socket keeps the cgroup it was created
//! in), then drops to the user, confines its system calls
//! (`agent_syscalls`) and execs.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::process::CommandExt as _,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

use crate::{
    agent_syscalls::Scoped,
    cgroup::{CgroupTree, valid_agent_name},
    cli::RunArgs,
    daemon::{AdminRequest, admin_request},
};

struct Target {
    uid: u32,
    gid: u32,
    name: String,
    home: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(&args.config)?;
    if !valid_agent_name(&args.agent) {
        bail!(
            "invalid agent name {:?}: use lower-case letters, digits, '-' and '_' (it is the policy's `agent:` and a cgroup name)",
            args.agent
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "airlock run must start as root: it moves the command into the agent's cgroup, then drops to --user"
        );
    }
    let target = match (&args.user, args.allow_root) {
        (Some(user), _) => Some(lookup_user(user)?),
        (None, true) => None,
        (None, false) => bail!(
            "refusing to run agent {} as root: root can leave its cgroup and open raw sockets, which escapes Airlock. Give --user USER (or --allow-root if you accept that)",
            args.agent
        ),
    };
    if target.as_ref().is_some_and(|t| t.uid == 0) && !args.allow_root {
        bail!(
            "--user resolves to uid 0 (root); root can leave its cgroup. Use an unprivileged user, or --allow-root"
        );
    }

    if let Some(t) = &target {
        refuse_user_with_a_manager(t)?;
    }
    if let Some((fd, family)) = crate::agent_syscalls::network_socket_among(&[0, 1, 2]) {
        let name = ["standard input", "standard output", "standard error"]
            .get(fd as usize)
            .copied()
            .unwrap_or("a standard descriptor");
        bail!(
            "{name} is a network socket (address family {family}), made outside the agent's cgroup: what the agent wrote to it would leave the host without passing Airlock. Give the agent a pipe, a file or a terminal instead (inetd, `Accept=yes` socket units with `StandardInput=socket`, `nc -e` and socat's `EXEC:...,nofork` hand it the connection itself)"
        );
    }

    let tree = CgroupTree::discover(&config.cgroup_root)?;
    if !tree.root.is_dir() {
        bail!(
            "{} does not exist: the Airlock daemon is not running (start it: `airlock daemon` or `systemctl start airlock`)",
            tree.root.display()
        );
    }
    // A root that exists is not enough: made anew (by hand, or by systemd
    // for airlock.slice) it has none of the hooks, and an agent there
    // would have the host's whole network.
    match crate::ebpf::missing_hooks(&tree.root) {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => bail!(
            "{} lacks Airlock's eBPF programs ({} of its {} hooks have none): an agent placed there would not be captured. A running daemon attaches them again within 2 s; otherwise start it (`systemctl start airlock`, or `airlock daemon`)",
            tree.root.display(),
            missing.len(),
            crate::ebpf::HOOK_COUNT
        ),
        Err(err) => bail!(
            "cannot ask the kernel which eBPF programs guard {}: {err}; not running the agent unguarded",
            tree.root.display()
        ),
    }
    let mut env = agent_env(&config, &args.agent)?;
    // The caller's JVM options stay, with the trust store after them.
    if let (Some(ours), Ok(theirs)) = (
        env.get_mut(crate::agent_env::JAVA_OPTIONS_VAR),
        std::env::var(crate::agent_env::JAVA_OPTIONS_VAR),
    ) && !theirs.trim().is_empty()
    {
        *ours = format!("{} {ours}", theirs.trim());
    }
    let dir = tree.enter(&args.agent, std::process::id())?;
    // Before Landlock, which forbids mounting; in this very thread, which
    // execs the command.
    let hidden = crate::agent_mounts::hide(&config.agent_hidden_sockets)?;
    if !hidden.is_empty() {
        tracing::debug!(sockets = ?hidden, "hid the host's service sockets from the agent");
    }
    // In this very thread, which execs the command: exec keeps the
    // Landlock domain.
    let scoped =
        crate::agent_syscalls::scope_to_self().context("cannot confine the agent with Landlock")?;
    match scoped {
        Scoped::Enforced => {}
        Scoped::NoScopes => eprintln!(
            "airlock: warning: this kernel has no Landlock scopes (6.12 and later): the agent can reach abstract Unix sockets and signal processes outside it"
        ),
        Scoped::Unsupported => eprintln!(
            "airlock: warning: this kernel has no Landlock (5.13 and later, with `landlock` in its `lsm=` list): the agent can reach abstract Unix sockets, signal processes outside it, and write to the memory of its user's other processes (/proc/PID/mem)"
        ),
    }
    if let Some(t) = &target {
        warn_of_other_processes(t, &tree.mount, &dir, &scoped);
    }
    tracing::debug!(cgroup = %dir.display(), "joined agent cgroup");

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).envs(&env);
    if let Some(t) = &target {
        cmd.uid(t.uid).gid(t.gid);
        cmd.env("HOME", &t.home)
            .env("USER", &t.name)
            .env("LOGNAME", &t.name);
    }
    // Built here: between fork and exec nothing may allocate.
    let filter = crate::agent_syscalls::build()?;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe syscalls (prctl, seccomp), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            // setuid programs (sudo, ping) must not win back what we drop.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Sockets the cgroup hooks never see: inherited ones, other
            // families, io_uring, other processes'.
            crate::agent_syscalls::close_inherited_on_exec()?;
            crate::agent_syscalls::install(&filter)
        });
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {:?}", args.command[0]))
}

/// A user whose systemd user manager runs (a login session, or lingering)
/// can have it start processes for them: `systemd-run --user` from inside
/// the agent would start one in the manager's cgroup, outside Airlock.
fn refuse_user_with_a_manager(target: &Target) -> anyhow::Result<()> {
    let runtime = std::path::PathBuf::from(format!("/run/user/{}", target.uid));
    for socket in ["bus", "systemd/private"] {
        let path = runtime.join(socket);
        if path.exists() {
            bail!(
                "user {name} has a systemd user manager running ({}): the agent could have it start processes outside its cgroup (`systemd-run --user`), which Airlock would not capture. Run the agent as a user of its own with no login session and no lingering (`useradd --system --no-create-home airlock-agent`), or end this user's sessions and `loginctl disable-linger {name}`",
                path.display(),
                name = target.name,
            );
        }
    }
    Ok(())
}

/// A process of the agent's user outside the agent's cgroup is outside
/// Airlock, and shares the agent's files: the agent may plant a script or
/// setting it reads, or connect to a Unix socket it listens on, and have
/// it reach the network instead. Without Landlock the agent may also write
/// its memory (`/proc/PID/mem` needs only the same user). Said, not
/// refused, since a user shared on purpose is the operator's choice.
fn warn_of_other_processes(
    target: &Target,
    mount: &std::path::Path,
    agent_dir: &std::path::Path,
    scoped: &Scoped,
) {
    let Ok(relative) = agent_dir.strip_prefix(mount) else {
        return;
    };
    let inside = format!("0::/{}", relative.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut outside = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let owned = std::fs::read_to_string(dir.join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .is_some_and(|uid| uid == target.uid.to_string())
        });
        if !owned {
            continue;
        }
        let in_agent = std::fs::read_to_string(dir.join("cgroup")).is_ok_and(|cg| {
            cg.lines()
                .any(|l| l == inside || l.starts_with(&format!("{inside}/")))
        });
        if !in_agent {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            outside.push(format!("{pid} ({})", comm.trim()));
        }
    }
    if !outside.is_empty() {
        outside.truncate(5);
        let memory = if *scoped == Scoped::Unsupported {
            ", or write to their memory (/proc/PID/mem)"
        } else {
            ""
        };
        eprintln!(
            "airlock: warning: user {} also runs processes outside this agent's cgroup (pid {}): they are outside Airlock, and share the agent's files: the agent could plant a script or setting they read, or connect to a Unix socket they listen on, and have them reach the network for it{memory}. Give the agent a user of its own (`useradd --system --no-create-home airlock-agent`)",
            target.name,
            outside.join(", ")
        );
    }
}

/// The environment of the policy the daemon has in force (a policy file
/// being edited with a typo does not change what the agent gets).
fn agent_env(
    config: &crate::config::Config,
    agent: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let answer = admin_request(
        &config.admin_socket,
        &AdminRequest::AgentEnv {
            agent: agent.to_string(),
        },
    )?;
    if let Some(err) = answer["error"].as_str() {
        bail!("{err}");
    }
    for secret in answer["missing_secrets"].as_array().into_iter().flatten() {
        eprintln!(
            "airlock: warning: secret {} is not in the vault; requests using it will not carry it until `airlock secret set {}`",
            secret.as_str().unwrap_or("?"),
            secret.as_str().unwrap_or("?")
        );
    }
    let vars = answer["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(vars)
}

fn lookup_user(user: &str) -> anyhow::Result<Target> {
    let entry = if let Ok(uid) = user.parse::<u32>() {
        // SAFETY: getpwuid returns a pointer into static storage or null;
        // this process is single-threaded here and copies it out at once.
        unsafe { libc::getpwuid(uid) }
    } else {
        let name = CString::new(user).context("user name contains NUL")?;
        // SAFETY: as above, with a NUL-terminated name.
        unsafe { libc::getpwnam(name.as_ptr()) }
    };
    if entry.is_null() {
        if let Ok(uid) = user.parse::<u32>() {
            return Ok(Target {
                uid,
                gid: uid,
                name: user.to_string(),
                home: "/".into(),
            });
        }
        bail!("no such user {user:?} (create it, e.g. `useradd --system {user}`)");
    }
    // SAFETY: non-null pointer to a passwd struct whose strings are
    // NUL-terminated, valid until the next getpw* call.
    let pw = unsafe { &*entry };
    // SAFETY: see above.
    let (name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(pw.pw_dir)
                .to_string_lossy()
                .into_owned(),
        )
    };
    Ok(Target {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        name,
        home,
    })
}
