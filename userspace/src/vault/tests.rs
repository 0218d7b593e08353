use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;

const VALUE: &str = "test-R3alT0kenValue0123456789";
const OTHER: &str = "test-AnotherRealValue9876";

fn secret(value: &str) -> Secret {
    Secret::new(value.as_bytes().to_vec())
}

fn fresh() -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::open(dir.path()).expect("open");
    (dir, vault)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dirent")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn envelope(vault: &Vault) -> serde_json::Value {
    serde_json::from_slice(&fs::read(vault.path()).expect("read vault")).expect("json")
}

fn write_envelope(vault: &Vault, value: &serde_json::Value) {
    fs::write(vault.path(), serde_json::to_vec(value).expect("encode")).expect("write vault");
}

fn assert_tampered(vault: &Vault, expected: TamperReason) {
    match vault.load() {
        Err(VaultError::Tampered { path, reason }) => {
            assert_eq!(path, vault.path());
            assert_eq!(reason, expected);
        }
        other => panic!("expected Tampered({expected:?}), got {other:?}"),
    }
}

#[test]
fn open_creates_private_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("a/b/state");
    let vault = Vault::open(&state).expect("open");
    // Traversable (agents reach the CA certificate below), never listable
    // or writable by others.
    assert_eq!(mode(&state), 0o711);
    assert_eq!(mode(&state.join("master.key")), 0o600);
    assert_eq!(
        fs::metadata(state.join("master.key")).expect("key").len(),
        32
    );
    assert_eq!(mode(vault.path()), 0o600);
    assert_eq!(vault.path(), state.join("vault.json"));
    assert!(vault.load().expect("load").is_empty());
    assert!(vault.list().expect("list").is_empty());

    // Opening again must reuse the key, not replace it.
    let key = fs::read(state.join("master.key")).expect("key");
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let again = Vault::open(&state).expect("reopen");
    assert_eq!(fs::read(state.join("master.key")).expect("key"), key);
    let contents = again.load().expect("load");
    assert_eq!(
        contents.get("gh").expect("gh").current.expose(),
        VALUE.as_bytes()
    );
}

#[test]
fn round_trip_set_load_list() {
    let (dir, vault) = fresh();
    let info = vault
        .set("zeta", SecretKind::Header, None, secret(OTHER))
        .expect("set zeta");
    assert_eq!(info.name, "zeta");
    assert_eq!(info.kind, SecretKind::Header);
    assert_eq!(info.placeholder, "airlock-ph-zeta");
    assert_eq!(info.version, 1);
    assert_eq!(info.previous_valid_until, None);
    assert!(info.updated > 1_600_000_000);
    vault
        .set(
            "alpha",
            SecretKind::Bearer,
            Some("ph-airlock-placeholder"),
            secret(VALUE),
        )
        .expect("set alpha");

    let contents = Vault::open(dir.path())
        .expect("reopen")
        .load()
        .expect("load");
    assert_eq!(contents.len(), 2);
    let alpha = contents.get("alpha").expect("alpha");
    assert_eq!(alpha.current.expose(), VALUE.as_bytes());
    assert_eq!(alpha.placeholder, "ph-airlock-placeholder");
    assert_eq!(alpha.kind, SecretKind::Bearer);
    assert!(alpha.previous.is_none());
    assert_eq!(
        contents.get("zeta").expect("zeta").current.expose(),
        OTHER.as_bytes()
    );
    assert!(contents.get("missing").is_none());
    let names: Vec<_> = contents.entries().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);

    let list = vault.list().expect("list");
    let names: Vec<_> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let shown = format!("{list:?}");
    assert!(!shown.contains(VALUE) && !shown.contains(OTHER), "{shown}");
}

#[test]
fn file_holds_no_plaintext_and_nonce_changes_each_write() {
    let (_dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let first = envelope(&vault);
    let raw = fs::read_to_string(vault.path()).expect("read");
    assert!(!raw.contains(VALUE));
    assert!(!raw.contains(&STANDARD.encode(VALUE)));
    assert!(
        !raw.contains("airlock-ph-gh"),
        "placeholders are encrypted too"
    );
    assert_eq!(first["format"], 1);
    let nonce = STANDARD
        .decode(first["nonce"].as_str().expect("nonce"))
        .expect("b64");
    assert_eq!(nonce.len(), 12);

    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set again");
    let second = envelope(&vault);
    assert_ne!(first["nonce"], second["nonce"]);
    assert_ne!(first["ciphertext"], second["ciphertext"]);
}

#[test]
fn replace_bumps_version_keeps_placeholder_and_drops_previous() {
    let (_dir, vault) = fresh();
    vault
        .set_at(
            "gh",
            SecretKind::Bearer,
            Some("gh-placeholder_x"),
            None,
            secret(VALUE),
            1_000,
        )
        .expect("set");
    vault
        .rotate_at("gh", secret(OTHER), Duration::from_secs(600), 1_100)
        .expect("rotate");
    let info = vault
        .set_at(
            "gh",
            SecretKind::Header,
            None,
            None,
            secret("third-value"),
            1_200,
        )
        .expect("replace");
    assert_eq!(info.version, 3);
    assert_eq!(info.kind, SecretKind::Header);
    assert_eq!(info.placeholder, "gh-placeholder_x");
    assert_eq!(info.previous_valid_until, None);
    assert_eq!(info.updated, 1_200);

    let contents = vault.load().expect("load");
    let entry = contents.get("gh").expect("gh");
    assert_eq!(entry.current.expose(), b"third-value");
    assert!(entry.previous.is_none());
    assert_eq!(entry.valid_values(1_201).count(), 1);
    assert_eq!(contents.records["gh"].created, 1_000);
}

#[test]
fn rotate_keeps_previous_for_the_grace_only() {
    let (_dir, vault) = fresh();
    vault
        .set_at("gh", SecretKind::Bearer, None, None, secret(VALUE), 1_000)
        .expect("set");
    let info = vault
        .rotate_at("gh", secret(OTHER), Duration::from_secs(60), 2_000)
        .expect("rotate");
    assert_eq!(info.version, 2);
    assert_eq!(info.previous_valid_until, Some(2_060));
    assert_eq!(info.placeholder, "airlock-ph-gh");
    assert_eq!(info.updated, 2_000);

    let contents = vault.load().expect("load");
    let entry = contents.get("gh").expect("gh");
    assert_eq!(entry.current.expose(), OTHER.as_bytes());
    let valid = |now| -> Vec<Vec<u8>> {
        entry
            .valid_values(now)
            .map(|s| s.expose().to_vec())
            .collect()
    };
    assert_eq!(
        valid(2_000),
        [OTHER.as_bytes().to_vec(), VALUE.as_bytes().to_vec()]
    );
    assert_eq!(valid(2_059).len(), 2);
    assert_eq!(valid(2_060), [OTHER.as_bytes().to_vec()]);
    assert_eq!(valid(9_999), [OTHER.as_bytes().to_vec()]);

    // A write after the grace removes the old value from the file.
    vault
        .set_at(
            "other",
            SecretKind::Bearer,
            None,
            None,
            secret("x-value"),
            2_061,
        )
        .expect("set other");
    let entry = vault.load().expect("load").get("gh").cloned().expect("gh");
    assert!(entry.previous.is_none());
    assert_eq!(entry.previous_valid_until, None);
}

#[test]
fn rotate_rounds_fractional_grace_up_and_real_clock_works() {
    let (_dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let info = vault
        .rotate_at("gh", secret(OTHER), Duration::from_millis(1_500), 100)
        .expect("rotate");
    assert_eq!(info.previous_valid_until, Some(102));

    let info = vault
        .rotate("gh", secret("third-value"), Duration::from_secs(3_600))
        .expect("rotate now");
    let until = info.previous_valid_until.expect("in grace");
    assert_eq!(until, info.updated + 3_600);
    let contents = vault.load().expect("load");
    let values: Vec<_> = contents
        .get("gh")
        .expect("gh")
        .valid_values(info.updated)
        .map(|s| s.expose().to_vec())
        .collect();
    assert_eq!(values, [b"third-value".to_vec(), OTHER.as_bytes().to_vec()]);
}

#[test]
fn rotate_and_remove_of_missing_secret_are_not_found() {
    let (_dir, vault) = fresh();
    assert!(matches!(
        vault.rotate("nope", secret(VALUE), Duration::ZERO),
        Err(VaultError::NotFound { name }) if name == "nope"
    ));
    assert!(matches!(
        vault.remove("nope"),
        Err(VaultError::NotFound { name }) if name == "nope"
    ));
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    vault.remove("gh").expect("remove");
    assert!(vault.load().expect("load").get("gh").is_none());
    assert!(matches!(
        vault.remove("gh"),
        Err(VaultError::NotFound { .. })
    ));
}

#[test]
fn tampered_ciphertext_is_refused_whole() {
    let (_dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let mut doc = envelope(&vault);
    let mut ciphertext = STANDARD
        .decode(doc["ciphertext"].as_str().expect("ct"))
        .expect("b64");
    ciphertext[5] ^= 0x01;
    doc["ciphertext"] = STANDARD.encode(&ciphertext).into();
    write_envelope(&vault, &doc);
    let tampered = fs::read(vault.path()).expect("read");

    assert_tampered(&vault, TamperReason::AuthenticationFailed);
    let err = vault.load().expect_err("tampered");
    let msg = err.to_string();
    assert!(msg.contains("cannot be authenticated"), "{msg}");
    assert!(msg.contains("nothing was loaded"), "{msg}");
    assert!(msg.contains(&vault.path().display().to_string()), "{msg}");
    assert!(!msg.contains(VALUE), "{msg}");

    // A write must not paper over the damage with a fresh vault.
    assert!(matches!(
        vault.set("new", SecretKind::Bearer, None, secret(OTHER)),
        Err(VaultError::Tampered { .. })
    ));
    assert!(matches!(vault.list(), Err(VaultError::Tampered { .. })));
    assert_eq!(fs::read(vault.path()).expect("read"), tampered);
}

#[test]
fn tampered_nonce_is_refused() {
    let (_dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let mut doc = envelope(&vault);
    let mut nonce = STANDARD
        .decode(doc["nonce"].as_str().expect("nonce"))
        .expect("b64");
    nonce[0] ^= 0x80;
    doc["nonce"] = STANDARD.encode(&nonce).into();
    write_envelope(&vault, &doc);
    assert_tampered(&vault, TamperReason::AuthenticationFailed);
}

#[test]
fn corrupt_envelopes_are_refused_with_a_reason() {
    let (_dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let good = envelope(&vault);

    fs::write(vault.path(), b"{ not json").expect("write");
    assert_tampered(&vault, TamperReason::NotJson);

    let mut doc = good.clone();
    doc["format"] = 2.into();
    write_envelope(&vault, &doc);
    assert_tampered(&vault, TamperReason::UnsupportedFormat);

    let mut doc = good.clone();
    doc["ciphertext"] = "@@not base64@@".into();
    write_envelope(&vault, &doc);
    assert_tampered(&vault, TamperReason::BadBase64);

    let mut doc = good.clone();
    doc["nonce"] = STANDARD.encode([0u8; 8]).into();
    write_envelope(&vault, &doc);
    assert_tampered(&vault, TamperReason::BadNonce);

    let mut doc = good.clone();
    doc["extra"] = true.into();
    write_envelope(&vault, &doc);
    assert_tampered(&vault, TamperReason::BadEnvelope);

    // The untouched envelope still loads: the checks above are not flaky.
    write_envelope(&vault, &good);
    assert_eq!(vault.load().expect("load").len(), 1);
}

#[test]
fn authenticated_but_invalid_document_is_refused() {
    let (dir, vault) = fresh();
    let key = master_key::read(&dir.path().join("master.key")).expect("key");
    let mut contents = VaultContents::default();
    for name in ["one", "two"] {
        contents.records.insert(
            name.to_owned(),
            Record {
                entry: Entry {
                    name: name.to_owned(),
                    kind: SecretKind::Bearer,
                    placeholder: "same-placeholder".to_owned(),
                    header: None,
                    version: 1,
                    current: secret(VALUE),
                    previous: None,
                    previous_valid_until: None,
                },
                created: 1,
                updated: 1,
            },
        );
    }
    file::write(dir.path(), vault.path(), &key, &contents).expect("write");
    assert_tampered(&vault, TamperReason::InvalidEntry);

    contents.records.remove("two");
    contents.records.get_mut("one").expect("one").entry.current = secret("bad\r\nvalue");
    file::write(dir.path(), vault.path(), &key, &contents).expect("write");
    assert_tampered(&vault, TamperReason::InvalidEntry);

    // A header on a kind that has none, or a name `set` would not store.
    let one = &mut contents.records.get_mut("one").expect("one").entry;
    one.current = secret(VALUE);
    one.header = Some("x-api-key".into());
    file::write(dir.path(), vault.path(), &key, &contents).expect("write");
    assert_tampered(&vault, TamperReason::InvalidEntry);
    let one = &mut contents.records.get_mut("one").expect("one").entry;
    one.kind = SecretKind::Header;
    one.header = Some("X-Api-Key".into());
    file::write(dir.path(), vault.path(), &key, &contents).expect("write");
    assert_tampered(&vault, TamperReason::InvalidEntry);
}

#[test]
fn a_header_secret_is_bound_to_its_header_until_its_kind_changes() {
    let (dir, vault) = fresh();
    let set = |kind, header: Option<&str>, value| {
        vault.set_at("api", kind, None, header, secret(value), 1_000)
    };
    let info = set(SecretKind::Header, Some("X-Api-Key"), VALUE).expect("set");
    assert_eq!(
        info.header.as_deref(),
        Some("x-api-key"),
        "stored lower-case"
    );
    // A new value, no header given: the binding stays.
    let info = set(SecretKind::Header, None, OTHER).expect("set again");
    assert_eq!(info.header.as_deref(), Some("x-api-key"));
    let reopened = Vault::open(dir.path())
        .expect("reopen")
        .load()
        .expect("load");
    assert_eq!(
        reopened.get("api").expect("api").header.as_deref(),
        Some("x-api-key")
    );
    // Another kind has no header.
    let info = set(SecretKind::Bearer, None, VALUE).expect("bearer");
    assert_eq!(info.header, None);

    for (kind, header, problem) in [
        (
            SecretKind::Bearer,
            "x-api-key",
            "only a secret of kind `header`",
        ),
        (SecretKind::Header, "bad header", "not a valid header name"),
        (SecretKind::Header, "Host", "does not forward it as sent"),
        (
            SecretKind::Header,
            "transfer-encoding",
            "does not forward it as sent",
        ),
    ] {
        match set(kind, Some(header), VALUE) {
            Err(err @ VaultError::InvalidHeader { .. }) => {
                let text = err.to_string();
                assert!(text.contains(problem) && text.contains("api"), "{text}");
                assert!(!text.contains(VALUE), "{text}");
            }
            other => panic!("{kind} {header}: {other:?}"),
        }
    }
    assert_eq!(vault.list().expect("list")[0].kind, SecretKind::Bearer);
}

#[test]
fn wrong_master_key_is_refused() {
    let (dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let key_path = dir.path().join("master.key");
    let mut key = fs::read(&key_path).expect("key");
    key[0] ^= 0xff;
    fs::write(&key_path, &key).expect("write key");
    assert_eq!(mode(&key_path), 0o600);
    assert_tampered(&vault, TamperReason::AuthenticationFailed);
    assert!(matches!(
        Vault::open(dir.path()).and_then(|v| v.load()),
        Err(VaultError::Tampered { .. })
    ));
}

#[test]
fn master_key_readable_by_others_is_refused_with_chmod_hint() {
    let (dir, vault) = fresh();
    let key_path = dir.path().join("master.key");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
    for result in [vault.load().map(drop), Vault::open(dir.path()).map(drop)] {
        match result {
            Err(e @ VaultError::MasterKeyPermissions { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("chmod 600 {}", key_path.display())),
                    "{msg}"
                );
                assert!(msg.contains("0644"), "{msg}");
            }
            other => panic!("expected MasterKeyPermissions, got {other:?}"),
        }
    }
    assert!(matches!(
        vault.set("gh", SecretKind::Bearer, None, secret(VALUE)),
        Err(VaultError::MasterKeyPermissions { .. })
    ));
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(matches!(
        vault.load(),
        Err(VaultError::MasterKeyPermissions { mode: 0o640, .. })
    ));
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");
    vault.load().expect("0600 is accepted");
}

#[test]
fn master_key_of_wrong_length_or_symlink_is_refused() {
    let (dir, vault) = fresh();
    let key_path = dir.path().join("master.key");
    let key = fs::read(&key_path).expect("key");
    fs::write(&key_path, &key[..31]).expect("truncate");
    assert!(matches!(
        vault.load(),
        Err(VaultError::MasterKeyLength { len: 31, .. })
    ));
    let mut longer = key.clone();
    longer.push(0);
    fs::write(&key_path, &longer).expect("extend");
    assert!(matches!(
        vault.load(),
        Err(VaultError::MasterKeyLength { len: 33, .. })
    ));

    let real = dir.path().join("elsewhere.key");
    fs::write(&real, &key).expect("write");
    fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::remove_file(&key_path).expect("rm");
    std::os::unix::fs::symlink(&real, &key_path).expect("symlink");
    assert!(matches!(
        vault.load(),
        Err(VaultError::MasterKeyNotFile { .. })
    ));
}

#[test]
fn missing_master_key_with_existing_vault_is_not_recreated() {
    let (dir, vault) = fresh();
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let key_path = dir.path().join("master.key");
    fs::remove_file(&key_path).expect("rm key");
    assert!(matches!(
        Vault::open(dir.path()),
        Err(VaultError::MasterKeyMissing { .. })
    ));
    assert!(!key_path.exists(), "a new key would orphan the vault");
    assert!(matches!(
        vault.load(),
        Err(VaultError::MasterKeyMissing { .. })
    ));
}

/// Whoever owns the state directory, or can write one above it, can swap
/// it whole: the vault and its key with it.
#[test]
fn a_state_dir_others_could_swap_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let state = open.join("state");
    match Vault::open(&state) {
        Err(e @ VaultError::StateDirUntrusted { .. }) => assert!(
            e.to_string().contains(&format!(
                "the directory {} above it is writable by every user",
                open.display()
            )),
            "{e}"
        ),
        other => panic!("expected StateDirUntrusted, got {other:?}"),
    }
    assert!(!state.join("master.key").exists());
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), None).expect("chown: this test needs root");
    match Vault::open(&state) {
        Err(e @ VaultError::StateDirUntrusted { .. }) => {
            assert!(e.to_string().contains("is owned by uid 65534"), "{e}")
        }
        other => panic!("expected StateDirUntrusted, got {other:?}"),
    }
    std::os::unix::fs::chown(&state, Some(0), None).expect("chown back");
    Vault::open(&state).expect("root's own state directory");
}

#[test]
fn group_writable_state_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o770)).expect("chmod");
    match Vault::open(dir.path()) {
        Err(e @ VaultError::StateDirInsecure { .. }) => {
            assert!(e.to_string().contains("chmod 700"), "{e}");
        }
        other => panic!("expected StateDirInsecure, got {other:?}"),
    }
    assert!(!dir.path().join("master.key").exists());
}

#[test]
fn writes_leave_no_temp_files_and_survive_a_stale_one() {
    let (dir, vault) = fresh();
    let expected: BTreeSet<String> = ["master.key", "vault.json", "vault.lock"]
        .map(String::from)
        .into();
    assert_eq!(names_in(dir.path()), expected);
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    vault
        .rotate("gh", secret(OTHER), Duration::from_secs(5))
        .expect("rotate");
    vault.remove("gh").expect("remove");
    assert_eq!(names_in(dir.path()), expected);

    // What a crash between writing the temp file and the rename leaves: the
    // old vault still loads, and the next write replaces the stale temp.
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    let tmp = dir.path().join("vault.json.tmp");
    fs::write(&tmp, b"half a vault").expect("stale tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        vault
            .load()
            .expect("load")
            .get("gh")
            .expect("gh")
            .current
            .expose(),
        VALUE.as_bytes()
    );
    vault
        .set("two", SecretKind::Bearer, None, secret(OTHER))
        .expect("set two");
    assert_eq!(names_in(dir.path()), expected);
    assert_eq!(mode(vault.path()), 0o600);
    assert_eq!(vault.load().expect("load").len(), 2);
}

#[test]
fn concurrent_sets_from_eight_threads_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let state = state.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                // Every thread opens too, so first-run key creation races as well.
                let vault = Vault::open(&state).expect("open");
                for i in 0..4 {
                    vault
                        .set(
                            &format!("s{t}-{i}"),
                            SecretKind::Bearer,
                            None,
                            secret(&format!("value-{t}-{i}")),
                        )
                        .expect("set");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
    let vault = Vault::open(&state).expect("open");
    let contents = vault.load().expect("load");
    assert_eq!(contents.len(), 32);
    for t in 0..8 {
        for i in 0..4 {
            let entry = contents.get(&format!("s{t}-{i}")).expect("entry");
            assert_eq!(entry.current.expose(), format!("value-{t}-{i}").as_bytes());
        }
    }
}

#[test]
fn invalid_names_are_rejected() {
    let (_dir, vault) = fresh();
    let long = "a".repeat(65);
    for name in [
        "", "A", "Gh", "-x", "_x", ".x", "a b", "a/b", "é", "a\n", &long,
    ] {
        assert!(
            matches!(
                vault.set(name, SecretKind::Bearer, None, secret(VALUE)),
                Err(VaultError::InvalidName { .. })
            ),
            "{name:?} accepted"
        );
    }
    let max = "a".repeat(64);
    for name in ["a", "0", "gh-token.v2_x", &max] {
        vault
            .set(name, SecretKind::Bearer, None, secret(VALUE))
            .unwrap_or_else(|e| panic!("{name:?} refused: {e}"));
    }
    assert!(vault.load().expect("load").get(&max).is_some());
}

#[test]
fn invalid_values_are_rejected_without_echoing_them() {
    let (_dir, vault) = fresh();
    let too_long = "x".repeat(VALUE_MAX + 1);
    let with_lf = format!("{VALUE}\n");
    let with_cr = format!("{VALUE}\rX-Injected: 1");
    let with_nul = format!("{VALUE}\0");
    let cases: [(&str, ValueProblem); 5] = [
        ("", ValueProblem::Empty),
        (&too_long, ValueProblem::TooLong { len: VALUE_MAX + 1 }),
        (&with_lf, ValueProblem::ForbiddenByte),
        (&with_cr, ValueProblem::ForbiddenByte),
        (&with_nul, ValueProblem::ForbiddenByte),
    ];
    for (value, expected) in cases {
        let err = vault
            .set("gh", SecretKind::Bearer, None, secret(value))
            .expect_err("accepted");
        assert!(
            matches!(&err, VaultError::InvalidValue { name, problem } if name == "gh" && *problem == expected),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains(VALUE));
    }
    vault
        .set("gh", SecretKind::Bearer, None, secret(VALUE))
        .expect("set");
    assert!(matches!(
        vault.rotate("gh", secret(&with_lf), Duration::ZERO),
        Err(VaultError::InvalidValue { .. })
    ));
    let max = "y".repeat(VALUE_MAX);
    vault
        .set("big", SecretKind::Bearer, None, secret(&max))
        .expect("64 KiB exactly");
    assert_eq!(
        vault
            .load()
            .expect("load")
            .get("big")
            .expect("big")
            .current
            .len(),
        VALUE_MAX
    );
}

#[test]
fn invalid_and_duplicate_placeholders_are_rejected() {
    let (_dir, vault) = fresh();
    let long = "p".repeat(201);
    for placeholder in [
        "short",
        "1234567",
        "has space in",
        "a/b/c/d/e",
        "100%valid",
        "pläceholder",
        &long,
    ] {
        assert!(
            matches!(
                vault.set("gh", SecretKind::Bearer, Some(placeholder), secret(VALUE)),
                Err(VaultError::InvalidPlaceholder { .. })
            ),
            "{placeholder:?} accepted"
        );
    }
    let max = "p".repeat(200);
    for placeholder in ["12345678", "ph-Abc.def_ghi~jkl", &max] {
        vault
            .set("gh", SecretKind::Bearer, Some(placeholder), secret(VALUE))
            .unwrap_or_else(|e| panic!("{placeholder:?} refused: {e}"));
    }

    vault
        .set(
            "one",
            SecretKind::Bearer,
            Some("shared-placeholder"),
            secret(VALUE),
        )
        .expect("one");
    match vault.set(
        "two",
        SecretKind::Bearer,
        Some("shared-placeholder"),
        secret(OTHER),
    ) {
        Err(VaultError::PlaceholderInUse { placeholder, owner }) => {
            assert_eq!(placeholder, "shared-placeholder");
            assert_eq!(owner, "one");
        }
        other => panic!("expected PlaceholderInUse, got {other:?}"),
    }
    // A default placeholder may collide with a custom one too.
    vault
        .set(
            "three",
            SecretKind::Bearer,
            Some("airlock-ph-four"),
            secret(VALUE),
        )
        .expect("three");
    assert!(matches!(
        vault.set("four", SecretKind::Bearer, None, secret(OTHER)),
        Err(VaultError::PlaceholderInUse { .. })
    ));
    // Re-setting an entry with its own placeholder is not a collision.
    vault
        .set(
            "one",
            SecretKind::Bearer,
            Some("shared-placeholder"),
            secret(OTHER),
        )
        .expect("same entry");
    assert!(vault.load().expect("load").get("two").is_none());
}

#[test]
fn debug_and_display_never_show_values() {
    let (_dir, vault) = fresh();
    vault
        .set_at("gh", SecretKind::Bearer, None, None, secret(VALUE), 1_000)
        .expect("set");
    vault
        .rotate_at("gh", secret(OTHER), Duration::from_secs(60), 1_010)
        .expect("rotate");
    let contents = vault.load().expect("load");
    let entry = contents.get("gh").expect("gh");
    let errors = [
        vault
            .set(
                "gh",
                SecretKind::Bearer,
                None,
                secret(&format!("{VALUE}\n")),
            )
            .expect_err("lf"),
        vault
            .rotate("missing", secret(VALUE), Duration::ZERO)
            .expect_err("missing"),
    ];
    let mut shown = vec![
        format!("{entry:?}"),
        format!("{entry:#?}"),
        format!("{contents:?}"),
        format!("{vault:?}"),
        format!("{}", entry.current),
        format!("{:?}", vault.list().expect("list")),
    ];
    for e in &errors {
        shown.push(format!("{e}"));
        shown.push(format!("{e:?}"));
    }
    for text in &shown {
        assert!(!text.contains(VALUE), "leaked current in {text}");
        assert!(!text.contains(OTHER), "leaked previous in {text}");
    }
    assert!(shown[0].contains("Secret(***)"));
    assert!(
        shown[0].contains("airlock-ph-gh"),
        "non-secret fields still show"
    );
}

#[test]
fn kinds_parse_and_display() {
    let names = [
        "bearer",
        "header",
        "basic",
        "query",
        "oauth2_client_credentials",
        "aws_sigv4",
        "github_app",
    ];
    for (kind, name) in SecretKind::ALL.into_iter().zip(names) {
        assert_eq!(kind.to_string(), name);
        assert_eq!(name.parse::<SecretKind>().expect("parse"), kind);
        assert_eq!(
            serde_json::to_string(&kind).expect("json"),
            format!("\"{name}\"")
        );
    }
    assert_eq!(SecretKind::default(), SecretKind::Bearer);
    assert!(matches!(
        "Bearer".parse::<SecretKind>(),
        Err(VaultError::UnknownKind { kind }) if kind == "Bearer"
    ));

    let (_dir, vault) = fresh();
    let stored = SecretKind::ALL;
    for kind in [SecretKind::Oauth2ClientCredentials, SecretKind::GithubApp] {
        let err = vault
            .set("fetched", kind, None, secret(VALUE))
            .expect_err("a token where the grant that fetches one belongs");
        assert!(
            matches!(&err, VaultError::InvalidValue { problem: ValueProblem::Grant { kind: k, .. }, .. } if *k == kind),
            "{err:?}"
        );
        assert!(err.to_string().contains("YAML with the keys"), "{err}");
        assert!(!err.to_string().contains(VALUE), "{err}");
    }
    for (kind, name) in SecretKind::ALL.into_iter().zip(names) {
        if !stored.contains(&kind) {
            continue;
        }
        let secret_name = name.replace('_', "-");
        let value = match kind {
            SecretKind::AwsSigv4 => AWS_VALUE.to_owned(),
            SecretKind::Oauth2ClientCredentials => OAUTH2_VALUE.to_owned(),
            SecretKind::GithubApp => github_app_value(),
            _ => VALUE.to_owned(),
        };
        vault
            .set(&secret_name, kind, None, secret(&value))
            .expect("set");
    }
    let contents = vault.load().expect("load");
    assert_eq!(contents.len(), stored.len());
    for (kind, name) in SecretKind::ALL.into_iter().zip(names) {
        if !stored.contains(&kind) {
            continue;
        }
        assert_eq!(
            contents.get(&name.replace('_', "-")).expect("entry").kind,
            kind
        );
    }
}

const AWS_VALUE: &str = "AKIDTESTVALUE0000001:test/aws+secret";
/// Spans lines, as YAML does: fetched-token kinds may.
const OAUTH2_VALUE: &str =
    "token_url: https://auth.example.test/token\nclient_id: c\nclient_secret: test-s3cret\n";

/// A GitHub App value with a key made by openssl, as GitHub hands them out.
fn github_app_value() -> String {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl (Debian: openssl)");
    assert!(out.status.success(), "openssl genrsa failed");
    let pem: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!("app_id: 1\ninstallation_id: 2\nprivate_key: |\n{pem}")
}

#[test]
fn an_aws_sigv4_value_must_be_a_key_pair_on_set_and_on_rotate() {
    let (_dir, vault) = fresh();
    for bad in [
        VALUE,
        "AKIDTESTVALUE0000001:",
        "id:secret:token:extra",
        "id:se cret",
    ] {
        match vault.set("aws", SecretKind::AwsSigv4, None, secret(bad)) {
            Err(
                e @ VaultError::InvalidValue {
                    problem: ValueProblem::NotAwsKey,
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("ACCESS_KEY_ID:SECRET_ACCESS_KEY"), "{text}");
                assert!(!text.contains(bad), "the error shows the value: {text}");
            }
            other => panic!("{bad:?} stored: {other:?}"),
        }
    }
    assert!(vault.load().expect("load").is_empty(), "nothing stored");
    vault
        .set("aws", SecretKind::AwsSigv4, None, secret(AWS_VALUE))
        .expect("a key pair");
    let bad_rotate = vault.rotate("aws", secret(VALUE), Duration::from_secs(60));
    assert!(
        matches!(bad_rotate, Err(VaultError::InvalidValue { .. })),
        "{bad_rotate:?}"
    );
    let kept = vault.load().expect("load");
    assert_eq!(
        kept.get("aws").expect("entry").current.expose(),
        AWS_VALUE.as_bytes()
    );
    vault
        .rotate(
            "aws",
            secret("AKIDTESTVALUE0000002:new/secret:token"),
            Duration::from_secs(60),
        )
        .expect("a key pair with a token");
}

#[test]
fn master_key_owned_by_another_user_is_refused() {
    // Giving a file away needs root; as an ordinary user there is nothing to test.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let (dir, vault) = fresh();
    let key_path = dir.path().join("master.key");
    std::os::unix::fs::chown(&key_path, Some(65534), None).expect("chown");
    match vault.load() {
        Err(e @ VaultError::MasterKeyOwner { owner: 65534, .. }) => {
            assert!(e.to_string().contains("chown"), "{e}");
        }
        other => panic!("expected MasterKeyOwner, got {other:?}"),
    }
}
