//! CURVE keys and the certificate files they live in.
//!
//! Keys are the 32-byte Curve25519 keys of ZeroMQ's CURVE mechanism
//! (RFC 26), written as 40 characters of Z85 (RFC 32), as
//! `zmq_curve_keypair` produces them. They are kept in certificate files in
//! the form CZMQ's `zcert` uses, so keys made with other ZeroMQ tools can be
//! used as they are: a ZPL file with a `curve` section holding `public-key`
//! (and, in the secret file only, `secret-key`) and a `metadata` section
//! for anything else (here: `name`). A key pair is two files: `NAME`, the
//! public certificate, to hand out; `NAME_secret`, readable by its owner
//! only (mode 0600), holding both keys.
//!
//! Keys are read from files only, never from the command line, where other
//! users of the machine can read them (`ps`).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::zpl;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key in Z85 characters.
pub const Z85_LEN: usize = 40;

/// Errors reading, checking or writing keys.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// This build of libzmq has no CURVE (it is built without libsodium).
    #[error("this build of libzmq has no CURVE support")]
    Unsupported,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid ZPL.
    #[error("{path}: {source}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: zpl::ZplError,
    },
    /// A key the file must hold is not there.
    #[error("{path}: no {key} (a certificate file has `curve` / `{key} = \"...\"`)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// `public-key` or `secret-key`.
        key: &'static str,
    },
    /// A key is not 40 characters of valid Z85.
    #[error("{path}: line {line}: {key} is not a CURVE key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Line of the key.
        line: usize,
        /// Which key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The secret key is not the one of the public key beside it.
    #[error("{0}: the secret key does not belong to the public key in the same file")]
    Mismatch(PathBuf),
    /// Keygen refuses to overwrite a key.
    #[error("{0} exists; not overwriting a key")]
    Exists(PathBuf),
    /// Two allowed keys carry the same name, so a user could not be told
    /// from another.
    #[error("{path}: key name {name:?} is already used by {other}")]
    DuplicateName {
        /// The second file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The first file.
        other: PathBuf,
    },
}

/// A CURVE public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// A CURVE secret key. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key as 40 characters of Z85.
    pub fn to_z85(&self) -> String {
        encode(&self.0)
    }

    /// Reads 40 characters of Z85.
    pub fn from_z85(text: &str) -> Result<PublicKey, String> {
        decode(text).map(PublicKey)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl SecretKey {
    /// The key as 40 characters of Z85 (only for writing its file).
    pub fn to_z85(&self) -> String {
        encode(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A public key and its secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// What others use to talk to us.
    pub public: PublicKey,
    /// What proves we are us.
    pub secret: SecretKey,
}

impl KeyPair {
    /// A new random key pair (libzmq's `zmq_curve_keypair`, from
    /// libsodium's random source).
    pub fn generate() -> Result<KeyPair, CurveError> {
        if !has_curve() {
            return Err(CurveError::Unsupported);
        }
        let pair = zmq::CurveKeyPair::new().map_err(|_| CurveError::Unsupported)?;
        Ok(KeyPair {
            public: PublicKey(pair.public_key),
            secret: SecretKey(pair.secret_key),
        })
    }

    /// Reads a secret certificate file (`NAME_secret`): both keys, and they
    /// must belong together.
    pub fn load(path: &Path) -> Result<KeyPair, CurveError> {
        let cert = Certificate::load(path)?;
        let Some(secret) = cert.secret else {
            return Err(CurveError::Missing {
                path: path.to_path_buf(),
                key: "secret-key",
            });
        };
        if public_of(&secret) != Some(cert.public) {
            return Err(CurveError::Mismatch(path.to_path_buf()));
        }
        Ok(KeyPair {
            public: cert.public,
            secret,
        })
    }
}

/// What a certificate file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// `curve/public-key`.
    pub public: PublicKey,
    /// `curve/secret-key`, in secret certificates only.
    pub secret: Option<SecretKey>,
    /// `metadata/NAME = "VALUE"` entries.
    pub metadata: HashMap<String, String>,
}

impl Certificate {
    /// Reads a certificate file.
    pub fn load(path: &Path) -> Result<Certificate, CurveError> {
        let text = std::fs::read_to_string(path).map_err(|source| CurveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Certificate::parse(&text, path)
    }

    /// Parses certificate text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Certificate, CurveError> {
        let entries = zpl::parse(text).map_err(|source| CurveError::Syntax {
            path: path.to_path_buf(),
            source,
        })?;
        let mut public = None;
        let mut secret = None;
        let mut metadata = HashMap::new();
        for e in entries {
            let bad = |reason: String| CurveError::BadKey {
                path: path.to_path_buf(),
                line: e.line,
                key: e.path.clone(),
                reason,
            };
            match e.path.as_str() {
                "curve/public-key" => public = Some(PublicKey(decode(&e.value).map_err(bad)?)),
                "curve/secret-key" => secret = Some(SecretKey(decode(&e.value).map_err(bad)?)),
                p => {
                    if let Some(name) = p.strip_prefix("metadata/") {
                        metadata.insert(name.to_string(), e.value);
                    }
                }
            }
        }
        let Some(public) = public else {
            return Err(CurveError::Missing {
                path: path.to_path_buf(),
                key: "public-key",
            });
        };
        Ok(Certificate {
            public,
            secret,
            metadata,
        })
    }
}

/// Reads a broker's public key from its public certificate (a secret one
/// does too: only its public key is taken).
pub fn load_public(path: &Path) -> Result<PublicKey, CurveError> {
    Certificate::load(path).map(|c| c.public)
}

/// The secret file of the key pair `path`: `path` + `_secret`, as CZMQ
/// names it.
pub fn secret_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push("_secret");
    PathBuf::from(s)
}

/// Generates a key pair and writes it as `path` (public certificate, mode
/// 0644) and `path_secret` (secret certificate, mode 0600), with `name` in
/// their metadata. Refuses to overwrite either file. Returns the pair.
pub fn write_new_pair(path: &Path, name: &str) -> Result<KeyPair, CurveError> {
    let pair = KeyPair::generate()?;
    let secret = secret_path(path);
    for p in [path, secret.as_path()] {
        if p.exists() {
            return Err(CurveError::Exists(p.to_path_buf()));
        }
    }
    let meta = format!("metadata\n    name = \"{}\"\n", name.replace('"', ""));
    let public_text = format!(
        "#   ZeroMQ CURVE public certificate, made by alaska.\n\
         #   Give it to the peers that must know this key (the broker's to its\n\
         #   clients; a client's to the broker's allowed keys).\n\n\
         {meta}curve\n    public-key = \"{}\"\n",
        pair.public
    );
    let secret_text = format!(
        "#   ZeroMQ CURVE SECRET certificate, made by alaska.\n\
         #   Keep it on this machine, readable by its owner only.\n\n\
         {meta}curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
        pair.public,
        pair.secret.to_z85()
    );
    // `--keygen keys/broker` in a fresh folder: make `keys/` (private to
    // its owner, as it will hold a secret) rather than fail.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| CurveError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
    }
    // The secret first: a public file without its secret is useless, the
    // other way round a retry would refuse to overwrite.
    create_new(&secret, 0o600, &secret_text)?;
    create_new(path, 0o644, &public_text)?;
    Ok(pair)
}

fn create_new(path: &Path, mode: u32, text: &str) -> Result<(), CurveError> {
    let err = |source| CurveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CurveError::Exists(path.to_path_buf())
            } else {
                err(e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The client keys a CURVE server accepts, each with the name that becomes
/// the connection's user (ZAP User-Id, what the ACL grants rights to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedKeys {
    by_key: HashMap<PublicKey, String>,
}

impl AllowedKeys {
    /// Keys from `path`: a directory of public certificates (every regular
    /// file not ending in `_secret` and not starting with `.`), or one file
    /// that is either a certificate or a list of `NAME = "Z85 KEY"` lines.
    /// A certificate's name is its `metadata/name`, else its file name.
    pub fn load(path: &Path) -> Result<AllowedKeys, CurveError> {
        let io = |source| CurveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut keys = AllowedKeys::default();
        let mut origin: HashMap<String, PathBuf> = HashMap::new();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        !n.starts_with('.') && !n.ends_with("_secret") && !n.ends_with('~')
                    })
                })
                .collect();
            files.sort();
            for f in files {
                let cert = Certificate::load(&f)?;
                let name = cert_name(&cert, &f);
                keys.add(name, cert.public, &f, &mut origin)?;
            }
            return Ok(keys);
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let entries = zpl::parse(&text).map_err(|source| CurveError::Syntax {
            path: path.to_path_buf(),
            source,
        })?;
        if entries.iter().any(|e| e.path == "curve/public-key") {
            let cert = Certificate::parse(&text, path)?;
            let name = cert_name(&cert, path);
            keys.add(name, cert.public, path, &mut origin)?;
            return Ok(keys);
        }
        for e in entries {
            let key = PublicKey::from_z85(&e.value).map_err(|reason| CurveError::BadKey {
                path: path.to_path_buf(),
                line: e.line,
                key: e.path.clone(),
                reason,
            })?;
            let here = PathBuf::from(format!("{}:{}", path.display(), e.line));
            keys.add(e.path, key, &here, &mut origin)?;
        }
        Ok(keys)
    }

    fn add(
        &mut self,
        name: String,
        key: PublicKey,
        from: &Path,
        origin: &mut HashMap<String, PathBuf>,
    ) -> Result<(), CurveError> {
        if let Some(other) = origin.get(&name) {
            return Err(CurveError::DuplicateName {
                path: from.to_path_buf(),
                name,
                other: other.clone(),
            });
        }
        origin.insert(name.clone(), from.to_path_buf());
        self.by_key.insert(key, name);
        Ok(())
    }

    /// Allows `key` under `name` (tests, and callers that build the set).
    pub fn insert(&mut self, name: impl Into<String>, key: PublicKey) {
        self.by_key.insert(key, name.into());
    }

    /// The name of an allowed key, or `None` for a key not allowed.
    pub fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// How many keys are allowed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key is allowed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

fn cert_name(cert: &Certificate, path: &Path) -> String {
    match cert.metadata.get("name") {
        Some(n) if !n.is_empty() => n.clone(),
        _ => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Whether this libzmq has CURVE.
pub fn has_curve() -> bool {
    zmq::has("curve").unwrap_or(false)
}

/// The public key of a secret key (libzmq's `zmq_curve_public`), or `None`
/// when libzmq cannot derive it.
pub fn public_of(secret: &SecretKey) -> Option<PublicKey> {
    let z85 = std::ffi::CString::new(secret.to_z85()).ok()?;
    let mut out = [0u8; Z85_LEN + 1];
    // SAFETY: `out` has room for 40 characters and the NUL; `z85` is a
    // NUL-terminated 40-character key.
    let rc = unsafe { zmq_sys::zmq_curve_public(out.as_mut_ptr().cast(), z85.as_ptr()) };
    if rc != 0 {
        return None;
    }
    let text = std::str::from_utf8(&out[..Z85_LEN]).ok()?;
    PublicKey::from_z85(text).ok()
}

fn encode(key: &[u8; KEY_LEN]) -> String {
    // 32 bytes is a multiple of 4, which is all Z85 asks.
    zmq::z85_encode(key).unwrap_or_default()
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], String> {
    let text = text.trim();
    if text.len() != Z85_LEN {
        return Err(format!(
            "{} characters, a key has {Z85_LEN}",
            text.chars().count()
        ));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| "not valid Z85".to_string())?;
    bytes.try_into().map_err(|_| "not valid Z85".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_pair_reads_back_and_the_secret_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-1");
        let pair = write_new_pair(&path, "worker-1").unwrap();
        let back = KeyPair::load(&secret_path(&path)).unwrap();
        assert_eq!(back, pair);
        assert_eq!(load_public(&path).unwrap(), pair.public);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(secret_path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public_text = std::fs::read_to_string(&path).unwrap();
        assert!(!public_text.contains("secret-key"), "{public_text}");
        assert!(matches!(
            write_new_pair(&path, "again"),
            Err(CurveError::Exists(_))
        ));
    }

    #[test]
    fn the_rfc_32_test_vector_decodes() {
        // RFC 32's example: 8 bytes <-> "HelloWorld".
        assert_eq!(
            zmq::z85_decode("HelloWorld").unwrap(),
            [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]
        );
    }

    #[test]
    fn a_secret_key_that_is_not_the_public_keys_is_refused() {
        let a = KeyPair::generate().unwrap();
        let b = KeyPair::generate().unwrap();
        let text = format!(
            "curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            a.public,
            b.secret.to_z85()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mixed_secret");
        std::fs::write(&p, text).unwrap();
        assert!(matches!(KeyPair::load(&p), Err(CurveError::Mismatch(_))));
    }

    #[test]
    fn bad_keys_name_the_line() {
        let e = Certificate::parse("curve\n    public-key = \"tooshort\"\n", Path::new("x"))
            .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("public-key"), "{e}");
        let e = Certificate::parse("metadata\n    name = a\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, CurveError::Missing { .. }), "{e}");
    }

    #[test]
    fn allowed_keys_from_a_directory_a_certificate_or_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("clients");
        std::fs::create_dir(&clients).unwrap();
        let app = write_new_pair(&clients.join("app"), "app").unwrap();
        let w = write_new_pair(&clients.join("w1"), "worker-1").unwrap();
        let keys = AllowedKeys::load(&clients).unwrap();
        assert_eq!(keys.len(), 2, "secret files are skipped");
        assert_eq!(keys.name_of(&app.public), Some("app"));
        assert_eq!(
            keys.name_of(&w.public),
            Some("worker-1"),
            "metadata name wins"
        );
        let stranger = KeyPair::generate().unwrap();
        assert_eq!(keys.name_of(&stranger.public), None);

        let one = AllowedKeys::load(&clients.join("app")).unwrap();
        assert_eq!(one.name_of(&app.public), Some("app"));

        let list = dir.path().join("keys.cfg");
        std::fs::write(
            &list,
            format!(
                "# allowed\nalice = \"{}\"\nbob = \"{}\"\n",
                app.public, w.public
            ),
        )
        .unwrap();
        let keys = AllowedKeys::load(&list).unwrap();
        assert_eq!(keys.name_of(&app.public), Some("alice"));
        assert_eq!(keys.name_of(&w.public), Some("bob"));

        std::fs::write(
            &list,
            format!("alice = \"{}\"\nalice = \"{}\"\n", app.public, w.public),
        )
        .unwrap();
        let e = AllowedKeys::load(&list).unwrap_err();
        assert!(matches!(e, CurveError::DuplicateName { .. }), "{e}");
    }
}

/// The CURVE flags the command-line clients (`alas`, `alaska-bench`) share:
/// file names only, keys are never given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CurveFlags {
    /// CURVE: our secret certificate file (NAME_secret).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ALAS_CURVE_CERT",
        requires = "curve_server"
    )]
    pub curve_cert: Option<PathBuf>,
    /// CURVE: the broker's public certificate file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ALAS_CURVE_SERVER",
        requires = "curve_cert"
    )]
    pub curve_server: Option<PathBuf>,
}

impl CurveFlags {
    /// The keys the flags name, or `None` when CURVE was not asked for.
    pub fn keys(&self) -> Result<Option<crate::mlm::CurveClientKeys>, CurveError> {
        match (&self.curve_cert, &self.curve_server) {
            (Some(cert), Some(server)) => {
                Ok(Some(crate::mlm::CurveClientKeys::load(cert, server)?))
            }
            _ => Ok(None),
        }
    }
}
