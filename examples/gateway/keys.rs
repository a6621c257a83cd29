//! The keys that sign and verify the affinity cookies: read at start from
//! `--secret-file` (else `STICKY_SECRET`, else made up at random), and
//! read again from the file while serving, on SIGHUP or
//! `POST /keys/reload`, so that rotating them needs no restart and loses
//! nothing the admin API or passive health set.
//!
//! A file that cannot be read again, or holds no usable key, changes
//! nothing: the keys in use stay, and the log (or the admin API's answer)
//! says why. Keys are shown only as fingerprints (see
//! [`KeyRing::fingerprints`]), never as secrets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tower_sticky::sticky_core::token::{KeyRing, KeyRingError};
use tower_sticky::Backends;

use crate::proxy::Upstream;

/// Where the keys came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--secret-file`: the only source that can be read again.
    File(PathBuf),
    /// The `STICKY_SECRET` environment variable, fixed for the process's
    /// life.
    Environment,
    /// A random key made at start.
    Random,
}

impl Source {
    /// How the admin API names the source.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::File(_) => "--secret-file",
            Source::Environment => "STICKY_SECRET",
            Source::Random => "random",
        }
    }

    /// The source in words, for messages.
    fn described(&self) -> &'static str {
        match self {
            Source::File(_) => "--secret-file",
            Source::Environment => "STICKY_SECRET",
            Source::Random => "a random key made at start",
        }
    }
}

/// The secrets in a key file's text: one per line, newest (signing)
/// first; blank lines and lines starting with `#` are not keys.
pub fn parse(text: &str) -> Result<KeyRing, KeyRingError> {
    KeyRing::new(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#')),
    )
}

/// The key ring in the file at `path`, or what is wrong with it.
pub fn read_file(path: &Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A key's fingerprint as the admin API and the log show it.
pub fn hex(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// The fingerprints of `ring`, in its order (the signing key's first).
pub fn fingerprints(ring: &KeyRing) -> Vec<String> {
    ring.fingerprints().map(hex).collect()
}

/// The gateway's keys: their source, and the backends whose pool uses them.
#[derive(Clone)]
pub struct Keys {
    source: Arc<Source>,
    backends: Backends<Upstream>,
    /// One reading at a time, so that each compares with the ring the one
    /// before it left; holds why the last reading failed, if it did.
    reading: Arc<tokio::sync::Mutex<Option<String>>>,
    /// Whether the last reading succeeded (or none was made), for readers
    /// that do not wait for one under way.
    last_read: Arc<std::sync::atomic::AtomicBool>,
}

/// Why the keys were not read again. The keys in use stay.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadError {
    /// They did not come from a file.
    NoFile(&'static str),
    /// The file could not be read, or holds no usable key ring.
    BadFile(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile(source) => write!(
                f,
                "the keys come from {source}, not a file: start the gateway with \
                 --secret-file to change them while it runs"
            ),
            ReloadError::BadFile(why) => write!(f, "--secret-file {why}"),
        }
    }
}

/// What a reading found.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The ring differs from the one in use before (and is now in use).
    pub changed: bool,
    /// The key that signed until now is no longer listed: every cookie it
    /// signed now counts as none, and its session starts again.
    pub dropped_signing_key: bool,
    /// The key that signs now was not listed before: a replica that does
    /// not list it yet takes the cookies it signs for forgeries.
    pub signing_key_new: bool,
    /// The fingerprints of the ring in use after this reading.
    pub fingerprints: Vec<String>,
}

impl Keys {
    /// Keys from `source`, as `backends`' pool uses them.
    pub fn new(source: Source, backends: Backends<Upstream>) -> Self {
        Self {
            source: Arc::new(source),
            backends,
            reading: Arc::default(),
            last_read: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The fingerprints of the keys in use, the signing key's first.
    pub fn fingerprints(&self) -> Vec<String> {
        fingerprints(self.backends.config().tokens.keys())
    }

    /// Whether the last reading of the file put its keys in use (true
    /// before any).
    pub fn last_read_succeeded(&self) -> bool {
        self.last_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the last reading of the file failed, if it did; waits for a
    /// reading under way.
    pub async fn last_error(&self) -> Option<String> {
        self.reading.lock().await.clone()
    }

    /// Reads the key file again and, if it holds a different ring, puts it
    /// in use for the next request. Logs what it did either way.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut last_error = self.reading.lock().await;
        let result = self.read_again().await;
        match &result {
            Ok(reloaded) if !reloaded.changed => {
                tracing::info!("keys read again: unchanged");
            }
            Ok(reloaded) => {
                tracing::info!(
                    signing = %reloaded.fingerprints[0],
                    keys = reloaded.fingerprints.len(),
                    "keys read again: new ring in use"
                );
                if reloaded.dropped_signing_key {
                    tracing::warn!(
                        "the key that signed cookies until now is no longer listed: \
                         the sessions it signed start again"
                    );
                }
                if reloaded.signing_key_new {
                    tracing::warn!(
                        "the key that signs cookies now was not listed before: replicas \
                         that do not list it yet take its cookies for forgeries and start \
                         their sessions again (list a new key second on every replica \
                         first, then move it first)"
                    );
                }
            }
            Err(error @ ReloadError::NoFile(_)) => {
                tracing::warn!("keys not read again: {error}");
            }
            Err(error) => {
                tracing::error!("keys not read again, the ones in use stay: {error}");
            }
        }
        match &result {
            Ok(_) => *last_error = None,
            Err(ReloadError::BadFile(why)) => *last_error = Some(why.clone()),
            Err(ReloadError::NoFile(_)) => {}
        }
        self.last_read
            .store(last_error.is_none(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    async fn read_again(&self) -> Result<Reloaded, ReloadError> {
        let path = match &*self.source {
            Source::File(path) => path,
            other => return Err(ReloadError::NoFile(other.described())),
        };
        // Off the thread that accepts connections: a file on a slow disk
        // must not hold them up.
        let reading = path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(reading))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)))
            .map_err(|e| ReloadError::BadFile(format!("{}: {e}", path.display())))?;
        let ring =
            parse(&text).map_err(|e| ReloadError::BadFile(format!("{}: {e}", path.display())))?;
        let before: Vec<u64> = self
            .backends
            .config()
            .tokens
            .keys()
            .fingerprints()
            .collect();
        let after: Vec<u64> = ring.fingerprints().collect();
        let changed = before != after;
        if changed {
            self.backends
                .set_keys(ring)
                .map_err(|e| ReloadError::BadFile(format!("{}: {e}", path.display())))?;
        }
        Ok(Reloaded {
            changed,
            dropped_signing_key: !after.contains(&before[0]),
            signing_key_new: !before.contains(&after[0]),
            fingerprints: after.into_iter().map(hex).collect(),
        })
    }
}

/// Reads the keys again at every SIGHUP, for as long as the gateway runs.
/// The handler is in place when this returns, not when the future is
/// first polled, so a SIGHUP sent once the gateway has said where it
/// listens never stops it.
pub fn reload_on_hangup(keys: Keys) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = signal(SignalKind::hangup());
        async move {
            let mut hangup = match hangup {
                Ok(hangup) => hangup,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch for SIGHUP; POST /keys/reload still works");
                    return;
                }
            };
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reading the keys again");
                let _ = keys.reload().await;
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        drop(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ProxyOptions;
    use tower_sticky::sticky_core::token::{TokenCodec, TokenConfig};
    use tower_sticky::sticky_core::{BackendSpec, BackendState, PoolConfig};

    const OLD: &str = "the old secret, sixteen bytes or more";
    const NEW: &str = "the new secret, sixteen bytes or more";

    struct KeyFile(PathBuf);

    impl KeyFile {
        fn new(name: &str, text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("gateway-keys-{name}-{}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).unwrap();
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn keys_from(source: Source, ring: KeyRing) -> Keys {
        let config = PoolConfig::new(TokenCodec::new(ring, TokenConfig::new("sticky")));
        let upstream = Upstream::new("http://127.0.0.1:9", &ProxyOptions::default()).unwrap();
        let backends = Backends::new(config, [(BackendSpec::new("b1"), upstream)]).unwrap();
        Keys::new(source, backends)
    }

    fn ring(secrets: &[&str]) -> KeyRing {
        KeyRing::new(secrets).unwrap()
    }

    #[test]
    fn a_key_file_skips_comments_and_blank_lines() {
        let from_file = parse(&format!("# newest first\n\n  {NEW}  \n# old:\n{OLD}\n")).unwrap();
        assert_eq!(fingerprints(&from_file), fingerprints(&ring(&[NEW, OLD])));
        assert_eq!(parse("# nothing\n\n").unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            parse(&format!("{NEW}\nshort\n")).unwrap_err(),
            KeyRingError::TooShort { position: 1 }
        );
    }

    #[tokio::test]
    async fn reading_again_rotates_in_steps_and_keeps_the_backends() {
        let file = KeyFile::new("steps", &format!("{OLD}\n"));
        let keys = keys_from(Source::File(file.0.clone()), ring(&[OLD]));
        keys.backends.drain("b1").unwrap();
        let old = fingerprints(&ring(&[OLD]))[0].clone();
        let new = fingerprints(&ring(&[NEW]))[0].clone();
        assert_eq!(keys.fingerprints(), [old.as_str()]);
        // (changed, dropped signing key, new signing key, fingerprints after)
        let read = || async {
            let r = keys.reload().await.unwrap();
            (
                r.changed,
                r.dropped_signing_key,
                r.signing_key_new,
                r.fingerprints,
            )
        };
        let (old, new) = (old.as_str().to_owned(), new.as_str().to_owned());

        assert_eq!(read().await, (false, false, false, vec![old.clone()]));
        // A comment changes nothing either.
        file.write(&format!("# the fleet's key\n{OLD}\n"));
        assert_eq!(read().await, (false, false, false, vec![old.clone()]));

        // The steps of a rotation, none of them to be warned about.
        file.write(&format!("{OLD}\n{NEW}\n"));
        let both = vec![old.clone(), new.clone()];
        assert_eq!(read().await, (true, false, false, both.clone()));
        assert_eq!(keys.fingerprints(), both);
        file.write(&format!("{NEW}\n{OLD}\n"));
        let swapped = vec![new.clone(), old.clone()];
        assert_eq!(read().await, (true, false, false, swapped.clone()));
        assert_eq!(keys.fingerprints(), swapped);
        file.write(&format!("{NEW}\n"));
        assert_eq!(read().await, (true, false, false, vec![new.clone()]));
        assert_eq!(keys.backends.status()[0].state, BackendState::Draining);

        // Straight to a key never listed, with the old one kept, then
        // without it: done, and each risk said.
        file.write(&format!("{OLD}\n{NEW}\n"));
        assert_eq!(
            read().await,
            (true, false, true, vec![old.clone(), new.clone()])
        );
        file.write(&format!("{NEW}\n"));
        assert_eq!(read().await, (true, true, false, vec![new.clone()]));
        file.write(&format!("{OLD}\n"));
        assert_eq!(read().await, (true, true, true, vec![old.clone()]));
        assert_eq!(keys.fingerprints(), [old]);
        assert!(keys.last_read_succeeded());
        assert_eq!(keys.last_error().await, None);
    }

    #[tokio::test]
    async fn a_bad_file_leaves_the_keys_in_use() {
        let file = KeyFile::new("bad", &format!("{OLD}\n"));
        let keys = keys_from(Source::File(file.0.clone()), ring(&[OLD]));
        let in_use = keys.fingerprints();
        for (text, why) in [
            ("", "at least one secret"),
            ("# only a comment\n", "at least one secret"),
            (&format!("{NEW}\nshort\n") as &str, "secret #2 is shorter"),
        ] {
            file.write(text);
            match keys.reload().await {
                Err(ReloadError::BadFile(message)) => {
                    assert!(message.contains(why), "{text:?}: {message}");
                    assert!(message.contains(&file.0.display().to_string()), "{message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
            assert_eq!(keys.fingerprints(), in_use, "{text:?}");
        }
        std::fs::remove_file(&file.0).unwrap();
        assert!(matches!(keys.reload().await, Err(ReloadError::BadFile(_))));
        assert_eq!(keys.fingerprints(), in_use);
        assert!(!keys.last_read_succeeded());
        let why = keys.last_error().await.unwrap();
        assert!(why.contains(&file.0.display().to_string()), "{why}");
        // A good file again: the failure is over.
        file.write(&format!("{OLD}\n"));
        assert!(keys.reload().await.is_ok());
        assert!(keys.last_read_succeeded());
        assert_eq!(keys.last_error().await, None);
    }

    #[tokio::test]
    async fn keys_from_the_environment_or_at_random_cannot_be_read_again() {
        for source in [Source::Environment, Source::Random] {
            let keys = keys_from(source.clone(), ring(&[OLD]));
            let error = keys.reload().await.unwrap_err();
            assert!(matches!(error, ReloadError::NoFile(_)), "{error}");
            let message = error.to_string();
            assert!(message.contains("--secret-file"), "{message}");
            let named = ["STICKY_SECRET", "a random key"];
            assert!(named.iter().any(|n| message.contains(n)), "{message}");
            // Nothing to read is no failed reading.
            assert!(keys.last_read_succeeded());
        }
    }
}
