//! Encryption at rest. One master key (a file, 0600) derives, with HKDF, the keys that
//! wrap per-contact data keys, protect inbox payloads and access tokens, and key the
//! blind indexes. Personal data is sealed with XChaCha20-Poly1305 under the contact's
//! own data key; the wrapped data keys live in a key store apart from the data, so
//! destroying a contact's key makes every copy of its data unreadable, backups included.

use std::fs;
use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::ids::Wamid;

/// The ciphertext format: version 2 binds a [`Place`]; version 1 bound a bare row id
/// and is only opened to upgrade it (see `storage::upgrade`).
const VERSION: u8 = 2;
const LEGACY_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    #[error("master key file {path}: {message}")]
    MasterKey { path: String, message: String },
    #[error("ciphertext is malformed or was not sealed under this key")]
    Open,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(out)
}

/// A fresh nonce from the thread's CSPRNG (ChaCha, seeded and reseeded from the
/// operating system). Two seals per message each made a getrandom system call; random
/// 192-bit nonces need unpredictability and no collisions, not a syscall apiece.
fn random_nonce() -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    rand::fill(&mut out[..]);
    out
}

/// Where a sealed value lives, bound into it as associated data: its tenant (empty
/// for data of no tenant), table, column and row. A ciphertext opens only in the place
/// it was sealed for, so values cannot be swapped between rows, columns or tenants
/// unnoticed.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub tenant: &'a str,
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'a str,
}

impl<'a> Place<'a> {
    pub fn new(tenant: &'a str, table: &'static str, column: &'static str, row: &'a str) -> Self {
        Place {
            tenant,
            table,
            column,
            row,
        }
    }

    /// Each part length-prefixed, so no two places share an encoding.
    fn aad(&self) -> Vec<u8> {
        let parts = [self.tenant, self.table, self.column, self.row];
        let mut out = Vec::with_capacity(40 + parts.iter().map(|p| p.len()).sum::<usize>());
        for part in parts {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// A symmetric AEAD key. Its bytes never leave this module except wrapped.
#[derive(Clone)]
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> SealKey {
        SealKey {
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// Seals `plain` for `place` (see [`Place`]).
    pub fn seal(&self, plain: &[u8], place: &Place<'_>) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_nonce();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let aad = place.aad();
        let sealed = self
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Open)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], place: &Place<'_>) -> Result<Vec<u8>, CryptoError> {
        self.open_version(sealed, VERSION, &place.aad())
    }

    pub fn open_string(&self, sealed: &[u8], place: &Place<'_>) -> Result<String, CryptoError> {
        String::from_utf8(self.open(sealed, place)?).map_err(|_| CryptoError::Open)
    }

    /// Opens a value sealed in the first format, whose associated data was a bare row
    /// id (or nothing that named its place); only the upgrade reads these.
    pub fn open_legacy(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_version(sealed, LEGACY_VERSION, aad)
    }

    fn open_version(&self, sealed: &[u8], version: u8, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != version {
            return Err(CryptoError::Open);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// The first ciphertext format, for tests of the upgrade that reads it.
#[cfg(any(test, feature = "testing"))]
impl SealKey {
    pub fn seal_legacy(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_nonce();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce_bytes),
                Payload { msg: plain, aad },
            )
            .map_err(|_| CryptoError::Open)?;
        Ok([&[LEGACY_VERSION][..], &nonce_bytes, &sealed].concat())
    }
}

#[cfg(any(test, feature = "testing"))]
impl Keyring {
    /// A data key wrapped in the first format, bound to `legacy_id` alone.
    pub fn new_legacy_key(&self, legacy_id: &str) -> Result<NewDataKey, CryptoError> {
        let bytes: [u8; KEY_LEN] = random_bytes()?;
        Ok(NewDataKey {
            wrapped: self.wrap.seal_legacy(&bytes, legacy_id.as_bytes())?,
            key: SealKey::from_bytes(&bytes),
        })
    }
}

fn key_from(bytes: Vec<u8>) -> Result<SealKey, CryptoError> {
    let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::Open)?;
    Ok(SealKey::from_bytes(&bytes))
}

/// Whether `sealed` is in the first ciphertext format (see [`SealKey::open_legacy`]).
pub fn is_legacy(sealed: &[u8]) -> bool {
    sealed.first() == Some(&LEGACY_VERSION)
}

/// A freshly generated per-contact data key and its wrapped form for the key store.
pub struct NewDataKey {
    pub key: SealKey,
    pub wrapped: Vec<u8>,
}

/// The keys derived from the master key. Cheap to clone (shared behind an `Arc`).
pub struct Keyring {
    /// HMAC of a fixed label under the master key, recorded in the database so a
    /// missing or different key file is recognised.
    check_value: String,
    wrap: SealKey,
    inbox: SealKey,
    secrets: SealKey,
    blind_index: [u8; KEY_LEN],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(..)")
    }
}

impl Keyring {
    pub fn from_master(master: &[u8; KEY_LEN]) -> Keyring {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"converra"), master);
        let derive = |info: &[u8]| {
            let mut out = [0u8; KEY_LEN];
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
            let _ = hk.expand(info, &mut out);
            out
        };
        let check_value = match <Hmac<Sha256> as Mac>::new_from_slice(master) {
            Ok(mut mac) => {
                mac.update(b"converra master key check v1");
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Keyring {
            check_value,
            wrap: SealKey::from_bytes(&derive(b"wrap data keys v1")),
            inbox: SealKey::from_bytes(&derive(b"inbox payloads v1")),
            secrets: SealKey::from_bytes(&derive(b"tenant secrets v1")),
            blind_index: derive(b"blind index v1"),
        }
    }

    /// Reads the master key file (64 hex characters); `None` when there is no such
    /// file. Whether a missing file may be created is the caller's decision (see
    /// `open_storage`): only where the database holds nothing sealed yet.
    pub fn load(path: &Path) -> Result<Option<Keyring>, CryptoError> {
        let err = |message: String| CryptoError::MasterKey {
            path: path.display().to_string(),
            message,
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        let bytes = hex::decode(text.trim())
            .map_err(|_| err("must hold 64 hexadecimal characters".into()))?;
        let master: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| err("must hold 64 hexadecimal characters (32 bytes)".into()))?;
        Ok(Some(Keyring::from_master(&master)))
    }

    /// Creates a new master key file (mode 0600, its folder 0700), synced together with
    /// its directory entry; when another process created it first, loads that one.
    pub fn create(path: &Path) -> Result<Keyring, CryptoError> {
        let err = |message: String| CryptoError::MasterKey {
            path: path.display().to_string(),
            message,
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            create_private_dir(parent).map_err(|e| err(format!("cannot create folder: {e}")))?;
        }
        let key: [u8; KEY_LEN] = random_bytes()?;
        match write_private_file(path, hex::encode(key).as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("cannot create: {e}"))),
        }
        // The file's contents are synced; its name lives in the directory.
        fs::File::open(parent.unwrap_or(Path::new(".")))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| err(format!("cannot sync its folder: {e}")))?;
        Keyring::load(path)?.ok_or_else(|| err("vanished right after it was created".into()))
    }

    /// The master key's check value (see [`Keyring::check_value`] field).
    pub fn check_value(&self) -> &str {
        &self.check_value
    }

    /// A new per-contact data key, wrapped for the key store (bound to its tenant and id).
    pub fn new_data_key(&self, tenant_id: &str, key_id: &str) -> Result<NewDataKey, CryptoError> {
        self.new_key(&Place::new(tenant_id, "data_keys", "wrapped_key", key_id))
    }

    pub fn unwrap_data_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<SealKey, CryptoError> {
        self.unwrap_key(
            &Place::new(tenant_id, "data_keys", "wrapped_key", key_id),
            wrapped,
        )
    }

    /// A new key for the raw payloads of `day`, wrapped for the key store.
    pub fn new_raw_key(&self, day: &str) -> Result<NewDataKey, CryptoError> {
        self.new_key(&Place::new("", "raw_keys", "wrapped_key", day))
    }

    pub fn unwrap_raw_key(&self, day: &str, wrapped: &[u8]) -> Result<SealKey, CryptoError> {
        self.unwrap_key(&Place::new("", "raw_keys", "wrapped_key", day), wrapped)
    }

    fn new_key(&self, place: &Place<'_>) -> Result<NewDataKey, CryptoError> {
        let bytes: [u8; KEY_LEN] = random_bytes()?;
        let wrapped = self.wrap.seal(&bytes, place)?;
        Ok(NewDataKey {
            key: SealKey::from_bytes(&bytes),
            wrapped,
        })
    }

    fn unwrap_key(&self, place: &Place<'_>, wrapped: &[u8]) -> Result<SealKey, CryptoError> {
        let bytes = self.wrap.open(wrapped, place)?;
        key_from(bytes)
    }

    /// Re-wraps, for `place`, a key wrapped in the first format (bound to `legacy_id`
    /// alone; day keys were `raw-day:DAY`); returns the key and its new wrapping.
    pub fn rewrap_legacy(
        &self,
        legacy_id: &str,
        wrapped: &[u8],
        place: &Place<'_>,
    ) -> Result<NewDataKey, CryptoError> {
        let bytes = self.wrap.open_legacy(wrapped, legacy_id.as_bytes())?;
        Ok(NewDataKey {
            wrapped: self.wrap.seal(&bytes, place)?,
            key: key_from(bytes)?,
        })
    }

    /// Inbox payloads and raw webhook bodies sealed before day keys (the upgrade
    /// re-seals them under their day's key).
    pub fn legacy_inbox(&self) -> &SealKey {
        &self.inbox
    }

    /// Tenant secrets such as Meta access tokens.
    pub fn secrets(&self) -> &SealKey {
        &self.secrets
    }

    /// A keyed hash of Meta's message id, as `messages` stores and indexes it: the
    /// first 128 bits, which keep the unique index small (every message inserts into
    /// it at a random place) while a collision stays out of reach (about 2^64
    /// messages). The tenant is in the hash, so the index needs no tenant column.
    pub fn wamid_index(&self, tenant_id: &str, wamid: &Wamid) -> String {
        let mut index = self.blind_index(tenant_id, "wamid", wamid.as_str());
        index.truncate(32);
        index
    }

    /// A keyed hash of an identifier, scoped to one tenant, for equality lookups
    /// without storing the identifier in clear.
    pub fn blind_index(&self, tenant_id: &str, kind: &str, value: &str) -> String {
        // HMAC accepts keys of any length, so new_from_slice cannot fail here.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.blind_index) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for part in [tenant_id, kind, value] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Creates `path` and its missing parents with mode 0700 (existing folders keep
/// theirs): the daemon's state is nobody else's to read, whatever the umask.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A new tenant API key: the secret shown once, and the hash that is stored.
pub struct NewApiKey {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

pub fn new_api_key() -> Result<NewApiKey, CryptoError> {
    let bytes: [u8; 32] = random_bytes()?;
    let secret = format!("cvk_{}", hex::encode(bytes));
    Ok(NewApiKey {
        hash: hash_api_key(&secret),
        prefix: secret[..12].to_string(),
        secret,
    })
}

/// API keys carry 256 random bits, so a plain SHA-256 is a sound, fast lookup hash.
pub fn hash_api_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::from_master(&[7u8; KEY_LEN])
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_place() {
        let ring = keyring();
        let dk = ring.new_data_key("t1", "k1").expect("key");
        let here = Place::new("t1", "contacts", "wa_id_ct", "row-1");
        let sealed = dk.key.seal(b"hello", &here).expect("seal");
        assert_eq!(dk.key.open(&sealed, &here).expect("open"), b"hello");
        for elsewhere in [
            Place::new("t1", "contacts", "wa_id_ct", "row-2"),
            Place::new("t2", "contacts", "wa_id_ct", "row-1"),
            Place::new("t1", "contacts", "user_id_ct", "row-1"),
            Place::new("t1", "messages", "wa_id_ct", "row-1"),
            // Length prefixes: moving a character between parts is another place.
            Place::new("t1", "contacts", "wa_id_c", "trow-1"),
        ] {
            assert!(dk.key.open(&sealed, &elsewhere).is_err(), "{elsewhere:?}");
        }
        let other = ring.new_data_key("t1", "k2").expect("key");
        assert!(other.key.open(&sealed, &here).is_err(), "other key fails");
        let unwrapped = ring
            .unwrap_data_key("t1", "k1", &dk.wrapped)
            .expect("unwrap");
        assert_eq!(unwrapped.open(&sealed, &here).expect("open"), b"hello");
        assert!(
            ring.unwrap_data_key("t1", "k2", &dk.wrapped).is_err(),
            "key id is bound"
        );
        assert!(
            ring.unwrap_data_key("t2", "k1", &dk.wrapped).is_err(),
            "tenant is bound"
        );
        assert!(!is_legacy(&sealed));
    }

    #[test]
    fn blind_index_is_stable_and_tenant_scoped() {
        let ring = keyring();
        let a = ring.blind_index("t1", "wa_id", "15551234567");
        assert_eq!(a, ring.blind_index("t1", "wa_id", "15551234567"));
        assert_ne!(a, ring.blind_index("t2", "wa_id", "15551234567"));
        assert_ne!(a, ring.blind_index("t1", "user_id", "15551234567"));
    }

    #[test]
    fn master_key_file_is_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/master.key");
        assert!(Keyring::load(&path).expect("load").is_none());
        let created = Keyring::create(&path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.path().join("sub"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let loaded = Keyring::load(&path).expect("reload").expect("exists");
        assert_eq!(loaded.check_value(), created.check_value());
        assert_ne!(keyring().check_value(), created.check_value());
        fs::write(&path, "not hex").expect("write");
        let err = Keyring::load(&path).expect_err("bad key");
        assert!(err.to_string().contains("hexadecimal"));
    }
}
