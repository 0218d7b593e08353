//! The policies in force, by agent, hot-reloaded from the policy directory.
//! A file that fails to parse or validate is rejected whole and the version
//! it replaced stays in force; the rejection is logged and counted. Each
//! load also indexes the hosts that any policy binds secrets to, which the
//! proxy asks about on every request.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sha2::{Digest as _, Sha256};
use tracing::{error, info, warn};

use super::{Policy, check_trusted, parse_policy, secret_hosts::SecretHosts};
use crate::metrics::Metrics;

pub struct PolicyStore {
    dir: PathBuf,
    /// Where the hosts policies have bound secrets to are kept across
    /// restarts (`secret_hosts`); none in tests that want a fresh start.
    memory: Option<PathBuf>,
    state: RwLock<State>,
    metrics: Arc<Metrics>,
    /// Bumped after every reload, for what outlives a decision (tunnels,
    /// WebSockets) to check it again.
    reloaded: tokio::sync::watch::Sender<u64>,
    /// The same count, read on every request without a lock: a connection
    /// keeps its last decision for as long as this has not moved.
    generation: AtomicU64,
}

#[derive(Default)]
struct State {
    by_agent: HashMap<String, Arc<Policy>>,
    /// Which agent each file defined when it last loaded cleanly.
    by_file: HashMap<PathBuf, String>,
    /// The current rejection of each file that has one.
    errors: HashMap<PathBuf, String>,
    /// The SHA-256 of each file's text as last read, clean or not: a
    /// reload pass reads every file, and only a file whose text changed is
    /// logged and counted again.
    digests: HashMap<PathBuf, [u8; 32]>,
    /// Built from `by_agent` whenever it changes, so that it misses no
    /// policy in force, and keeping every host it held before: what a host
    /// was sent under a rule since taken away, it may still give back.
    secret_hosts: SecretHosts,
}

/// The hosts a previous start kept at `path`. A file that does not read
/// back is moved aside (named in the log) rather than lost, and the index
/// starts from the policies alone.
fn recall(path: &Path) -> SecretHosts {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return SecretHosts::default(),
        Err(err) => {
            error!(file = %path.display(), error = %err, "cannot read the hosts that hold secrets; starting from the policies alone");
            return SecretHosts::default();
        }
    };
    match SecretHosts::from_text(&text) {
        Ok(index) => index,
        Err(why) => {
            let aside = path.with_extension("damaged");
            let moved = std::fs::rename(path, &aside);
            error!(
                file = %path.display(),
                %why,
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "the hosts that hold secrets do not read back; starting from the policies alone (fix the file and move it back, then restart, to keep its hosts)"
            );
            SecretHosts::default()
        }
    }
}

/// Writes the index to `path`, whole or not at all. A failure is logged:
/// the index in memory still holds for as long as the daemon runs.
fn remember(path: &Path, index: &SecretHosts) {
    if let Err(err) = crate::atomic_file::write(path, index.to_text().as_bytes(), 0o600) {
        error!(file = %path.display(), error = %err, "cannot keep the hosts that hold secrets for the next start; they hold until this daemon stops");
    }
}

/// Debounce: editors write a file in several steps (truncate, write, rename).
const SETTLE: Duration = Duration::from_millis(150);
/// How often the watcher also looks at what the policy files lead to: a
/// symlinked policy's target changes in a directory no watch covers.
const LOOK: Duration = Duration::from_secs(2);

impl PolicyStore {
    /// A store that starts from the policies alone and keeps nothing.
    #[cfg(test)]
    pub fn load(dir: &Path, metrics: Arc<Metrics>) -> Arc<PolicyStore> {
        PolicyStore::load_remembering(dir, None, metrics)
    }

    /// As `load`, starting from (and keeping up to date) the hosts that
    /// `memory` says policies have bound secrets to before this start.
    pub fn load_remembering(
        dir: &Path,
        memory: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Arc<PolicyStore> {
        let remembered = memory.as_deref().map(recall).unwrap_or_default();
        let store = Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            memory,
            state: RwLock::new(State {
                secret_hosts: remembered,
                ..State::default()
            }),
            metrics,
            reloaded: tokio::sync::watch::Sender::new(0),
            generation: AtomicU64::new(0),
        });
        store.reload();
        store
    }

    pub fn get(&self, agent: &str) -> Option<Arc<Policy>> {
        self.state.read().ok()?.by_agent.get(agent).cloned()
    }

    /// Moves after every reload, once the policies it loaded are in force.
    /// Read it before [`PolicyStore::get`]: what is read after a given
    /// generation is at least as new as that generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Returns once `agent`'s policy in force no longer passes `allows`
    /// (or the agent has none): checked at once, then after every
    /// reload. A connection that outlives the decision that let it
    /// through (a tunnel, a WebSocket) races its relay against this, so
    /// that a permission taken away ends it too.
    pub async fn revoked(&self, agent: &str, allows: impl Fn(&Policy) -> bool) {
        // Subscribed before the first check: a reload between the two is
        // seen by the wait below.
        let mut reloads = self.reloaded.subscribe();
        loop {
            if !self.get(agent).is_some_and(|policy| allows(&policy)) {
                return;
            }
            if reloads.changed().await.is_err() {
                // The store is gone with the daemon: nothing changes now.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether a rule with credentials, in any agent's policy in force or
    /// loaded since the daemon started, matches `host` on `port`: that
    /// upstream may have been sent a secret and may give it back, to
    /// whichever agent asks, after the rule that sent it is gone too. A poisoned lock
    /// answers yes: scrubbing an answer that needed none costs little.
    pub fn holds_secrets(&self, host: &str, port: u16) -> bool {
        self.state
            .read()
            .map_or(true, |state| state.secret_hosts.holds(host, port))
    }

    /// Re-read every policy file. Clean files replace what they defined;
    /// rejected files leave their previous version in force; removed files
    /// take their agent's policy with them.
    pub fn reload(&self) {
        let files = policy_files(&self.dir);
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let mut next = State::default();
        // First the files that still parse, then the previous versions of
        // those that do not, so a good file always wins over a stale one.
        let mut kept_previous = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path);
            if let Ok(text) = &text {
                next.digests
                    .insert(path.clone(), Sha256::digest(text.as_bytes()).into());
            }
            let parsed = check_trusted(path)
                .map_err(|e| e.to_string())
                .and(text.map_err(|err| format!("{}: cannot read: {err}", path.display())))
                .and_then(|text| parse_policy(path, &text).map_err(|e| e.to_string()));
            match parsed {
                Ok(policy) => {
                    if let Some(other) = next.by_agent.get(&policy.agent).map(|p| p.source.clone())
                    {
                        let msg = format!(
                            "{}: agent {} is already defined by {}; one agent, one file",
                            path.display(),
                            policy.agent,
                            other.display()
                        );
                        self.reject(path, msg, &state, &mut next);
                        continue;
                    }
                    let unchanged = state.digests.get(path) == next.digests.get(path)
                        && !state.errors.contains_key(path)
                        && state.by_file.get(path) == Some(&policy.agent);
                    if !unchanged {
                        info!(agent = %policy.agent, file = %path.display(), "policy loaded");
                        self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                    }
                    next.by_file.insert(path.clone(), policy.agent.clone());
                    next.by_agent.insert(policy.agent.clone(), Arc::new(policy));
                }
                Err(msg) => {
                    let news = self.reject(path, msg, &state, &mut next);
                    if let Some(agent) = state.by_file.get(path)
                        && let Some(prev) = state.by_agent.get(agent)
                    {
                        kept_previous.push((path.clone(), agent.clone(), prev.clone(), news));
                    }
                }
            }
        }
        for (path, agent, prev, news) in kept_previous {
            if next.by_agent.contains_key(&agent) {
                continue;
            }
            if news {
                warn!(agent = %agent, file = %path.display(), "keeping the previous policy in force");
            }
            next.by_file.insert(path, agent.clone());
            next.by_agent.insert(agent, prev);
        }
        for (path, agent) in &state.by_file {
            if !files.contains(path) && !next.by_agent.contains_key(agent) {
                info!(agent = %agent, file = %path.display(), "policy removed: the agent has no egress now");
            }
        }
        next.secret_hosts =
            SecretHosts::build(next.by_agent.values().map(|p| &**p)).keep(&state.secret_hosts);
        if next.secret_hosts.len() > state.secret_hosts.len()
            && let Some(memory) = &self.memory
        {
            remember(memory, &next.secret_hosts);
        }
        *state = next;
        drop(state);
        self.generation.fetch_add(1, Ordering::Release);
        self.reloaded.send_modify(|generation| *generation += 1);
    }

    /// Records a file's rejection, and says whether it is news: one already
    /// reported, of a file untouched since, is not logged or counted again.
    fn reject(&self, path: &Path, msg: String, state: &State, next: &mut State) -> bool {
        let news = state.errors.get(path) != Some(&msg)
            || state.digests.get(path) != next.digests.get(path);
        if news {
            error!(file = %path.display(), "policy rejected:\n{msg}");
            self.metrics
                .policy_reloads
                .with_label_values(&["error"])
                .inc();
        }
        next.errors.insert(path.to_path_buf(), msg);
        news
    }

    pub fn summary(&self) -> serde_json::Value {
        let Ok(state) = self.state.read() else {
            return serde_json::Value::Null;
        };
        let mut agents: Vec<_> = state
            .by_agent
            .values()
            .map(|p| serde_json::json!({"agent": p.agent, "file": p.source.display().to_string()}))
            .collect();
        agents.sort_by_key(|v| v["agent"].as_str().map(str::to_owned));
        let mut errors: Vec<&String> = state.errors.values().collect();
        errors.sort();
        serde_json::json!({"dir": self.dir.display().to_string(), "loaded": agents, "errors": errors})
    }

    /// Reload on every change in the directory, on a thread of its own,
    /// and whenever a look every [`LOOK`] finds that a file the policies
    /// are read from changed: a symlinked policy (`pr-bot.yaml ->
    /// /srv/deploy/pr-bot.yaml`) is edited where no watch reaches, and a
    /// directory that cannot be watched is still followed.
    pub fn watch(self: Arc<Self>) {
        use notify::{RecursiveMode, Watcher as _};
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .and_then(|mut watcher| {
            watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        })
        .map_err(|err| {
            error!(dir = %self.dir.display(), error = %err, "cannot watch policies; changes are seen within {} s", LOOK.as_secs());
        })
        .ok();
        // Taken now: a change made while the thread starts is a change.
        // One made between the first load and now is read at once.
        let mut seen = Sources::of(&self.dir);
        self.reload();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                let _watcher = watcher;
                loop {
                    match rx.recv_timeout(LOOK) {
                        // Let the burst of events from one save settle.
                        Ok(_) => while rx.recv_timeout(SETTLE).is_ok() {},
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if Sources::of(&self.dir) == seen {
                                continue;
                            }
                        }
                        // No watcher: only the looks remain.
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(LOOK);
                            if Sources::of(&self.dir) == seen {
                                continue;
                            }
                        }
                    }
                    seen = Sources::of(&self.dir);
                    self.reload();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|err| error!(error = %err, "cannot start the policy watcher"));
    }
}

/// What each policy file leads to, as of a look: the file a name resolves
/// to (through any symlink), its inode, size and times. Any edit, in place
/// or by rename, changes one of them.
#[derive(PartialEq, Eq)]
struct Sources(Vec<(PathBuf, Option<Stamp>)>);

/// Device, inode, size, and modification and change times (seconds,
/// nanoseconds).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

impl Sources {
    fn of(dir: &Path) -> Sources {
        use std::os::unix::fs::MetadataExt as _;
        Sources(
            policy_files(dir)
                .into_iter()
                .map(|path| {
                    let stamp = std::fs::metadata(&path).ok().map(|m| {
                        (
                            m.dev(),
                            m.ino(),
                            m.size(),
                            m.mtime(),
                            m.mtime_nsec(),
                            m.ctime(),
                            m.ctime_nsec(),
                        )
                    });
                    (path, stamp)
                })
                .collect(),
        )
    }
}

/// The files `airlock policy check` reads ([`super::load_dir`]), the same
/// names: a hidden file (an editor's, a deploy tool's half-written copy)
/// must neither define an agent nor take its name from the file checked.
fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| super::is_policy_file_name(p) && p.is_file())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::PolicyStore;
    use crate::{metrics::Metrics, policy::HttpDecision};

    const BINDS: &str =
        "agent: writer\nrules:\n  - host: api.example.com\n    credentials: [{secret: key}]\n";
    const READS: &str =
        "agent: reader\nrules:\n  - host: api.example.com\n  - host: log.example.net\n";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write policy");
    }

    /// `airlock_policy_reload_total` counts files loaded or rejected anew,
    /// not reload passes: a save of one file, or an editor's temporary file
    /// in the directory, makes a pass that reads every file.
    #[test]
    fn only_files_that_changed_are_counted_as_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "writer.yaml", BINDS);
        write(dir.path(), "reader.yaml", READS);
        let metrics = Metrics::new().expect("metrics");
        let store = PolicyStore::load(dir.path(), metrics.clone());
        let counts = || {
            let c = |result| metrics.policy_reloads.with_label_values(&[result]).get();
            (c("ok"), c("error"))
        };
        assert_eq!(counts(), (2, 0), "both files load at start");

        store.reload();
        assert_eq!(counts(), (2, 0), "a pass that finds nothing new");

        write(dir.path(), "reader.yaml", &READS.replace("log.", "logs."));
        store.reload();
        assert_eq!(counts(), (3, 0), "one file edited");

        write(
            dir.path(),
            "reader.yaml",
            "agent: reader\nrules:\n  - hots: x\n",
        );
        store.reload();
        store.reload();
        assert_eq!(counts(), (3, 1), "a typo, reported once");
        assert!(store.get("reader").is_some(), "the previous version stays");

        write(
            dir.path(),
            "reader.yaml",
            "agent: reader\nrules:\n  - hots: y\n",
        );
        store.reload();
        assert_eq!(counts(), (3, 2), "another typo is news");

        write(dir.path(), "reader.yaml", &READS.replace("log.", "logs."));
        store.reload();
        assert_eq!(
            counts(),
            (4, 2),
            "the fix loads, though its text is the previous one's"
        );
    }

    fn store(dir: &Path) -> std::sync::Arc<PolicyStore> {
        PolicyStore::load(dir, Metrics::new().expect("metrics"))
    }

    /// The daemon reads the files `airlock policy check` checks.
    #[test]
    fn the_daemon_loads_the_files_policy_check_reads_and_no_hidden_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Sorted first, it would define the reader and reject the file
        // that `policy check` passed.
        write(dir.path(), ".reader.yaml", &READS.replace("api.", "wide."));
        write(dir.path(), "reader.yaml", READS);
        write(dir.path(), "writer.YAML", BINDS);
        let store = store(dir.path());
        let reader = store.get("reader").expect("reader's policy");
        assert!(matches!(
            reader.decide_http("api.example.com", 443, "GET", "/"),
            HttpDecision::Allow(_)
        ));
        assert!(!matches!(
            reader.decide_http("wide.example.com", 443, "GET", "/"),
            HttpDecision::Allow(_)
        ));
        assert!(store.get("writer").is_some(), "an extension in upper case");
        let report = crate::policy::load_dir(dir.path());
        assert_eq!(report.policies.len(), 2);
        assert!(report.errors.is_empty());
    }

    #[test]
    fn a_host_one_agent_binds_secrets_to_holds_them_for_every_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "writer.yaml", BINDS);
        write(dir.path(), "reader.yaml", READS);
        let store = store(dir.path());
        let reader = store.get("reader").expect("reader's policy");
        // The reader's own policy binds nothing to the host; the store says
        // it holds secrets all the same.
        let HttpDecision::Allow(allowed) = reader.decide_http("api.example.com", 443, "GET", "/")
        else {
            panic!("the reader may GET the host");
        };
        assert!(!allowed.binds_secrets_to_host);
        assert!(store.holds_secrets("api.example.com", 443));
        assert!(!store.holds_secrets("api.example.com", 8443));
        assert!(!store.holds_secrets("log.example.net", 443));
    }

    /// A store over a policy directory whose `reader.yaml` links to a file
    /// in another directory (both kept alive by what is returned).
    fn linked_reader() -> (
        tempfile::TempDir,
        tempfile::TempDir,
        std::sync::Arc<PolicyStore>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let deploy = tempfile::tempdir().expect("deploy dir");
        write(deploy.path(), "reader.yaml", READS);
        std::os::unix::fs::symlink(
            deploy.path().join("reader.yaml"),
            dir.path().join("reader.yaml"),
        )
        .expect("symlink");
        let store = store(dir.path());
        (dir, deploy, store)
    }

    /// Whether the reader may reach the log host, as the store has it now.
    fn reads_the_log(store: &PolicyStore) -> bool {
        store.get("reader").is_some_and(|p| {
            matches!(
                p.decide_http("log.example.net", 443, "GET", "/"),
                HttpDecision::Allow(_)
            )
        })
    }

    /// The reader's linked policy edited in place, as an editor may (`sed
    /// -i` renames): the log host becomes another.
    fn edit_linked_reader(deploy: &Path) {
        write(deploy, "reader.yaml", &READS.replace("log.", "logs."));
    }

    /// A policy linked from elsewhere is edited where the watch on the
    /// policy directory sees nothing; the watcher's looks find it.
    #[test]
    fn an_edit_to_a_symlinked_policys_target_takes_effect() {
        let (_dir, deploy, store) = linked_reader();
        assert!(reads_the_log(&store));
        store.clone().watch();
        edit_linked_reader(deploy.path());
        let deadline = std::time::Instant::now() + super::LOOK * 4;
        while reads_the_log(&store) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!reads_the_log(&store), "the edit never took effect");
    }

    /// An edit made after the policies were loaded and before the watcher
    /// started (the daemon starts more between the two) is not lost.
    #[test]
    fn an_edit_before_the_watcher_starts_takes_effect() {
        let (_dir, deploy, store) = linked_reader();
        assert!(reads_the_log(&store));
        edit_linked_reader(deploy.path());
        store.clone().watch();
        assert!(
            !reads_the_log(&store),
            "the edit made before the watcher started was lost"
        );
    }

    #[tokio::test]
    async fn revoked_returns_once_a_reload_takes_the_permission_away() {
        use std::time::Duration;
        use tokio::time::timeout;

        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "reader.yaml", READS);
        let store = store(dir.path());
        let reads_the_log = |policy: &crate::policy::Policy| {
            matches!(
                policy.decide_http("log.example.net", 443, "GET", "/"),
                HttpDecision::Allow(_)
            )
        };
        let wait = store.revoked("reader", reads_the_log);
        tokio::pin!(wait);
        // Allowed: it waits, also across a reload that changes nothing.
        assert!(
            timeout(Duration::from_millis(100), &mut wait)
                .await
                .is_err()
        );
        store.reload();
        assert!(
            timeout(Duration::from_millis(100), &mut wait)
                .await
                .is_err()
        );
        // A reload that takes the host away ends the wait.
        write(
            dir.path(),
            "reader.yaml",
            "agent: reader\nrules:\n  - host: api.example.com\n",
        );
        store.reload();
        timeout(Duration::from_secs(5), &mut wait)
            .await
            .expect("revoked after the reload");
        // An agent with no policy has nothing to keep.
        timeout(Duration::from_secs(1), store.revoked("nobody", |_| true))
            .await
            .expect("no policy, no permission");
    }

    #[test]
    fn the_hosts_that_hold_secrets_outlive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("state");
        let memory = state.path().join("secret-hosts");
        write(dir.path(), "writer.yaml", BINDS);
        let first = PolicyStore::load_remembering(
            dir.path(),
            Some(memory.clone()),
            Metrics::new().expect("metrics"),
        );
        assert!(first.holds_secrets("api.example.com", 443));
        drop(first);
        std::fs::remove_file(dir.path().join("writer.yaml")).expect("remove");

        let second = PolicyStore::load_remembering(
            dir.path(),
            Some(memory.clone()),
            Metrics::new().expect("metrics"),
        );
        assert!(second.holds_secrets("api.example.com", 443));
        assert!(!second.holds_secrets("www.example.org", 443));
        drop(second);

        // A damaged file is moved aside, not lost, and the start goes on.
        std::fs::write(&memory, "api.example.com\n").expect("damage");
        let third = PolicyStore::load_remembering(
            dir.path(),
            Some(memory.clone()),
            Metrics::new().expect("metrics"),
        );
        assert!(!third.holds_secrets("api.example.com", 443));
        assert_eq!(
            std::fs::read_to_string(memory.with_extension("damaged")).expect("moved aside"),
            "api.example.com\n"
        );
    }

    #[test]
    fn a_reload_adds_hosts_that_hold_secrets_and_takes_none_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "reader.yaml", READS);
        let store = store(dir.path());
        assert!(!store.holds_secrets("api.example.com", 443));

        write(dir.path(), "writer.yaml", BINDS);
        store.reload();
        assert!(store.holds_secrets("api.example.com", 443));

        // Another agent's edit moves the binding to another host.
        write(
            dir.path(),
            "reader.yaml",
            "agent: reader\nrules:\n  - host: \"*.example.net\"\n    credentials: [{secret: other}]\n",
        );
        store.reload();
        assert!(store.holds_secrets("api.example.com", 443));
        assert!(store.holds_secrets("log.example.net", 443));

        // A file that no longer validates keeps its previous version in
        // force, and with it what that version binds.
        write(dir.path(), "writer.yaml", "agent: writer\nrules: [oops\n");
        store.reload();
        assert!(store.holds_secrets("api.example.com", 443));

        // The upstream keeps what it was sent after the rule that sent
        // it is gone: removing the policy, or the credentials from a rule,
        // leaves the host holding secrets.
        std::fs::remove_file(dir.path().join("writer.yaml")).expect("remove");
        store.reload();
        assert!(store.holds_secrets("api.example.com", 443));
        assert!(store.holds_secrets("log.example.net", 443));

        write(dir.path(), "reader.yaml", READS);
        store.reload();
        assert!(store.holds_secrets("log.example.net", 443));
        assert!(store.holds_secrets("api.example.com", 443));
        // What no rule with credentials ever named still holds nothing.
        assert!(!store.holds_secrets("api.example.com", 8443));
        assert!(!store.holds_secrets("www.example.org", 443));
    }
}
