//! The on-disk format of `vault.json` and its atomic replacement.
//!
//! ```json
//! { "format": 1, "nonce": "<base64, 12 bytes>", "ciphertext": "<base64>" }
//! ```
//! The ciphertext is AES-256-GCM, with AAD `airlock-vault-v1`, of a JSON
//! document `{ "entries": [ { name, kind, placeholder, version, current,
//! previous, previous_valid_until, created, updated } ] }` where `current`
//! and `previous` are base64 of the secret bytes.
//!
//! Every buffer that holds plaintext is a `Zeroizing` one, including the
//! buffer the document is serialised into (see `ZeroizingWriter`), so
//! decrypted secrets do not linger in freed heap memory.

use std::collections::btree_map;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::Nonce;
use aes_gcm::aead::AeadInPlace;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::entry::{Entry, Record, SecretKind, VaultContents};
use super::master_key::MasterKey;
use super::{TamperReason, VaultError, validate};
use crate::secret::Secret;

pub const FORMAT: u64 = 1;
/// Binds the ciphertext to this format: a blob encrypted for another purpose
/// under the same key does not authenticate as a vault.
const AAD: &[u8] = b"airlock-vault-v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: u64,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    entries: Vec<StoredEntry>,
}

/// The serialised form of one entry. Values are base64 text here, so this
/// struct wipes them itself when dropped.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    name: String,
    kind: SecretKind,
    placeholder: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    version: u32,
    current: String,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    previous_valid_until: Option<u64>,
    created: u64,
    updated: u64,
}

impl Drop for StoredEntry {
    fn drop(&mut self) {
        self.current.zeroize();
        if let Some(previous) = self.previous.as_mut() {
            previous.zeroize();
        }
    }
}

/// Reads, authenticates, decrypts and validates the whole vault, or fails
/// without returning any of it.
pub fn read(path: &Path, key: &MasterKey) -> Result<VaultContents, VaultError> {
    let raw = fs::read(path).map_err(|source| VaultError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(&raw, key).map_err(|reason| VaultError::Tampered {
        path: path.to_owned(),
        reason,
    })
}

fn decode(raw: &[u8], key: &MasterKey) -> Result<VaultContents, TamperReason> {
    // Errors from here on are reduced to a `TamperReason`: serde messages can
    // quote the input, and after decryption the input is the secrets.
    let value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|_| TamperReason::NotJson)?;
    if value.get("format").and_then(serde_json::Value::as_u64) != Some(FORMAT) {
        return Err(TamperReason::UnsupportedFormat);
    }
    let envelope: Envelope =
        serde_json::from_value(value).map_err(|_| TamperReason::BadEnvelope)?;
    let nonce = STANDARD
        .decode(&envelope.nonce)
        .map_err(|_| TamperReason::BadBase64)?;
    if nonce.len() != NONCE_LEN {
        return Err(TamperReason::BadNonce);
    }
    let mut plain = Zeroizing::new(
        STANDARD
            .decode(&envelope.ciphertext)
            .map_err(|_| TamperReason::BadBase64)?,
    );
    key.cipher()
        .decrypt_in_place(Nonce::from_slice(&nonce), AAD, &mut *plain)
        .map_err(|_| TamperReason::AuthenticationFailed)?;
    let document: Document =
        serde_json::from_slice(&plain).map_err(|_| TamperReason::MalformedDocument)?;
    from_document(&document)
}

/// Applies the same rules as the write path: a file that decrypts but holds
/// something `set` would refuse (a CR in a value, a duplicate placeholder) is
/// not trusted either.
fn from_document(document: &Document) -> Result<VaultContents, TamperReason> {
    let mut contents = VaultContents::default();
    for stored in &document.entries {
        let record = to_record(stored).ok_or(TamperReason::InvalidEntry)?;
        if contents
            .placeholder_owner(&record.entry.placeholder, &record.entry.name)
            .is_some()
        {
            return Err(TamperReason::InvalidEntry);
        }
        match contents.records.entry(record.entry.name.clone()) {
            btree_map::Entry::Occupied(_) => return Err(TamperReason::InvalidEntry),
            btree_map::Entry::Vacant(slot) => {
                slot.insert(record);
            }
        }
    }
    Ok(contents)
}

fn to_record(stored: &StoredEntry) -> Option<Record> {
    validate::name(&stored.name).ok()?;
    validate::placeholder(&stored.placeholder).ok()?;
    let header = match &stored.header {
        // Only a lower-case name as `set` stores it is taken as it is.
        Some(header) => Some(
            validate::header(&stored.name, stored.kind, header)
                .ok()
                .filter(|valid| valid == header)?,
        ),
        None => None,
    };
    if stored.version == 0 || stored.previous.is_some() != stored.previous_valid_until.is_some() {
        return None;
    }
    let current = decode_value(&stored.name, stored.kind, &stored.current)?;
    let previous = match &stored.previous {
        Some(text) => Some(decode_value(&stored.name, stored.kind, text)?),
        None => None,
    };
    Some(Record {
        entry: Entry {
            name: stored.name.clone(),
            kind: stored.kind,
            placeholder: stored.placeholder.clone(),
            header,
            version: stored.version,
            current,
            previous,
            previous_valid_until: stored.previous_valid_until,
        },
        created: stored.created,
        updated: stored.updated,
    })
}

fn decode_value(name: &str, kind: SecretKind, text: &str) -> Option<Secret> {
    let secret = Secret::new(STANDARD.decode(text).ok()?);
    validate::value(name, kind, &secret).ok()?;
    Some(secret)
}

/// Encrypts `contents` under a fresh nonce and atomically replaces `path`.
pub fn write(
    dir: &Path,
    path: &Path,
    key: &MasterKey,
    contents: &VaultContents,
) -> Result<(), VaultError> {
    let encode_err = || VaultError::Encode {
        path: path.to_owned(),
    };
    let mut buf = encode_document(contents).map_err(|_| encode_err())?;
    // A nonce must never repeat under one key; 96 random bits per write keeps
    // the collision odds negligible for any realistic number of writes.
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|source| VaultError::Random { source })?;
    key.cipher()
        .encrypt_in_place(Nonce::from_slice(&nonce), AAD, &mut *buf.0)
        .map_err(|_| encode_err())?;
    let envelope = Envelope {
        format: FORMAT,
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(&*buf.0),
    };
    let mut out = serde_json::to_vec_pretty(&envelope).map_err(|_| encode_err())?;
    out.push(b'\n');
    atomic_write(dir, path, &out)
}

fn encode_document(contents: &VaultContents) -> io::Result<ZeroizingWriter> {
    let document = Document {
        entries: contents
            .records
            .values()
            .map(|record| StoredEntry {
                name: record.entry.name.clone(),
                kind: record.entry.kind,
                placeholder: record.entry.placeholder.clone(),
                header: record.entry.header.clone(),
                version: record.entry.version,
                current: STANDARD.encode(record.entry.current.expose()),
                previous: record
                    .entry
                    .previous
                    .as_ref()
                    .map(|secret| STANDARD.encode(secret.expose())),
                previous_valid_until: record.entry.previous_valid_until,
                created: record.created,
                updated: record.updated,
            })
            .collect(),
    };
    let mut writer = ZeroizingWriter(Zeroizing::new(Vec::new()));
    serde_json::to_writer(&mut writer, &document).map_err(io::Error::other)?;
    // Room for the GCM tag now, so encrypt_in_place does not reallocate and
    // leave a copy of the plaintext behind.
    writer.reserve(TAG_LEN);
    Ok(writer)
}

/// A `Vec` writer that never lets `Vec` reallocate on its own: growing goes
/// through a fresh buffer and the old one is zeroized as it is dropped.
struct ZeroizingWriter(Zeroizing<Vec<u8>>);

impl ZeroizingWriter {
    fn reserve(&mut self, additional: usize) {
        let needed = self.0.len().saturating_add(additional);
        if needed <= self.0.capacity() {
            return;
        }
        let capacity = needed.max(self.0.capacity().saturating_mul(2)).max(1024);
        let mut bigger = Zeroizing::new(Vec::with_capacity(capacity));
        bigger.extend_from_slice(&self.0);
        self.0 = bigger;
    }
}

impl Write for ZeroizingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.reserve(data.len());
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Write to a temp file in the same directory, fsync it, rename it over
/// `path`, fsync the directory. Readers see the old file or the new one, and
/// a crash at any point leaves the old file in place. Callers hold the vault
/// lock, so one fixed temp name is enough and a stale one from a crash is
/// simply replaced.
pub fn atomic_write(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let tmp = temp_path(path);
    let io_err = |path: &Path, source: io::Error| VaultError::Io {
        path: path.to_owned(),
        source,
    };
    remove_if_present(&tmp).map_err(|e| io_err(&tmp, e))?;
    let written = write_synced(&tmp, bytes)
        .map_err(|e| io_err(&tmp, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_err(path, e)));
    if written.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir).map_err(|e| io_err(dir, e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename or link durable: without it a power cut can lose the new
/// directory entry even though the file data was synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
