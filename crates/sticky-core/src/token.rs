//! The affinity token: the value of the load-balancer cookie (or affinity
//! header).
//!
//! A token is 38 bytes written as 51 characters of URL-safe base64 without
//! padding (cookie-safe, well under 64 characters):
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0      | format version (1)                                           |
//! | 1      | key id (derived from the signing key)                        |
//! | 2..10  | backend tag: HMAC of the backend's name under the key        |
//! | 10..14 | group tag: HMAC of the group's name under the key            |
//! | 14..18 | issued at, Unix seconds, big-endian                          |
//! | 18..22 | last seen, Unix seconds, big-endian                          |
//! | 22..38 | HMAC-SHA256 over the cookie name and bytes 0..22, truncated  |
//!
//! The tags are opaque: a client can neither read a backend's name nor
//! forge a route to one, and a token issued for one cookie name is refused
//! under another. Lifetimes are judged from the signed times only after the
//! signature checks out, with a configurable clock-skew allowance, using
//! wall-clock seconds so that every replica agrees.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sticky_core::token::{KeyRing, TokenCodec, TokenConfig, TokenError};
//!
//! let keys = KeyRing::new(["a secret of at least sixteen bytes"]).unwrap();
//! let codec = TokenCodec::new(keys, TokenConfig::new("sticky"));
//! let now = Duration::from_secs(1_700_000_000);
//!
//! let text = codec.seal(0x1234, 7, now, now);
//! assert!(text.len() <= 64);
//! let token = codec.open(&text, now).unwrap();
//! assert_eq!(token.backend_tag, 0x1234);
//!
//! let mut forged = text.clone();
//! forged.replace_range(10..11, if &text[10..11] == "A" { "B" } else { "A" });
//! assert!(matches!(codec.open(&forged, now), Err(TokenError::BadSignature)));
//! ```

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const RAW_LEN: usize = 38;
const SIGNED_LEN: usize = 22;
const MAC_LEN: usize = RAW_LEN - SIGNED_LEN;
/// Length of a token's text.
pub const TOKEN_LEN: usize = 51;
/// The shortest secret a key ring accepts.
pub const MIN_SECRET_LEN: usize = 16;

/// One key of a [`KeyRing`].
#[derive(Clone)]
struct RingKey {
    id: u8,
    /// See [`KeyRing::fingerprints`].
    fingerprint: u64,
    /// HMAC state with the key already absorbed, cloned per use.
    mac: HmacSha256,
}

/// The secrets that sign and verify tokens: the first signs, all verify.
///
/// Rotate by putting a new secret first and keeping the old one listed for
/// as long as tokens signed with it should stay valid. Each key's id is
/// derived from the secret itself, so reordering the ring changes nothing.
///
/// Replicas that share sessions rotate in two steps, each rolled out to
/// every replica before the next: first list the new secret second (the
/// old one still signs; both verify), then move it first. A replica that
/// signs with the new secret re-signs the tokens it sees, and a replica
/// that does not know it yet would take those for forgeries and move their
/// sessions. A running pool takes each step's ring with
/// [`Pool::set_keys`](crate::Pool::set_keys), so no step needs a restart,
/// and counts the tokens still signed with older keys
/// ([`Snapshot::older_key_tokens`](crate::Snapshot::older_key_tokens)),
/// which says when the old key can go.
///
/// `Debug` shows how many keys there are, never the secrets.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
}

/// Why a key ring could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRingError {
    /// No secret was given.
    Empty,
    /// A secret (at this position in the list) is shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    TooShort {
        /// Position of the secret in the list, from 0.
        position: usize,
    },
}

impl fmt::Display for KeyRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRingError::Empty => f.write_str("the key ring needs at least one secret"),
            KeyRingError::TooShort { position } => write!(
                f,
                "secret #{} is shorter than {MIN_SECRET_LEN} bytes; use 32 random bytes",
                position + 1
            ),
        }
    }
}

impl std::error::Error for KeyRingError {}

impl KeyRing {
    /// A ring of `secrets`, newest (signing) first.
    pub fn new<I, K>(secrets: I) -> Result<KeyRing, KeyRingError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let mut keys = Vec::new();
        for (position, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyRingError::TooShort { position });
            }
            let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
            let mut id_mac = mac.clone();
            id_mac.update(b"tower-sticky key id");
            let id = id_mac.finalize().into_bytes()[0];
            let mut print_mac = mac.clone();
            print_mac.update(b"tower-sticky key fingerprint");
            let print = print_mac.finalize().into_bytes();
            let fingerprint = u64::from_be_bytes(print[..8].try_into().expect("8 bytes"));
            keys.push(RingKey {
                id,
                fingerprint,
                mac,
            });
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// One fingerprint per key, in ring order (the signing key's first):
    /// 64 bits of an HMAC under the key of a fixed message, for telling
    /// keys apart without showing them. Replicas that list the same secrets
    /// in the same order show the same fingerprints, so an operator can
    /// check that a rotation reached every one. A fingerprint cannot be
    /// turned back into its secret, nor used to sign anything; but, like a
    /// token, it lets whoever sees it test guesses of the secret, and as
    /// its message is the same everywhere, one list of guesses serves for
    /// every fingerprint. Secrets of 32 random bytes are out of reach of
    /// guessing; a secret a person chose may not be.
    ///
    /// ```
    /// use sticky_core::token::KeyRing;
    ///
    /// let old = KeyRing::new(["the old secret, sixteen bytes+"]).unwrap();
    /// let both = KeyRing::new(["the new secret, sixteen bytes+", "the old secret, sixteen bytes+"])
    ///     .unwrap();
    /// let old: Vec<u64> = old.fingerprints().collect();
    /// let both: Vec<u64> = both.fingerprints().collect();
    /// assert_eq!(both[1], old[0]);
    /// assert_ne!(both[0], old[0]);
    /// ```
    pub fn fingerprints(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.keys.iter().map(|k| k.fingerprint)
    }

    fn tag(&self, key: usize, domain: &[u8], name: &str) -> [u8; 32] {
        let mut mac = self.keys[key].mac.clone();
        mac.update(domain);
        mac.update(name.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The backend tag of `name` under key `key` (0 = the signing key).
    pub fn backend_tag(&self, key: usize, name: &str) -> u64 {
        let t = self.tag(key, b"backend\0", name);
        u64::from_be_bytes(t[..8].try_into().expect("8 bytes"))
    }

    /// The group tag of `name` (`""` for the default group) under key `key`.
    pub fn group_tag(&self, key: usize, name: &str) -> u32 {
        let t = self.tag(key, b"group\0", name);
        u32::from_be_bytes(t[..4].try_into().expect("4 bytes"))
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Above half the idle timeout, a session whose requests come more often
/// than its idle timeout could still run out between two re-issues.
const MAX_REFRESH_FRACTION: f64 = 0.5;

/// Lifetimes and naming of tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenConfig {
    /// The cookie (or header) name the token is bound to.
    pub name: String,
    /// Longest life from issue, whatever the activity (`None`: unlimited).
    pub max_lifetime: Option<Duration>,
    /// Longest gap between requests (`None`: unlimited).
    pub idle_timeout: Option<Duration>,
    /// How far clocks of replicas may disagree.
    pub clock_skew: Duration,
    /// A returning session is re-issued a token once its last-seen time is
    /// older than this fraction of the idle timeout (0.0 to 0.5; larger
    /// values count as 0.5). The last-seen time only moves when a token
    /// is re-issued, so a session is kept while its requests come at most
    /// (1 − fraction) × the idle timeout apart.
    pub refresh_fraction: f64,
}

impl TokenConfig {
    /// Tokens bound to `name`, no lifetimes, 30 s of skew, refresh at a
    /// quarter of the idle timeout.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_lifetime: None,
            idle_timeout: None,
            clock_skew: Duration::from_secs(30),
            refresh_fraction: 0.25,
        }
    }

    /// Sets the maximum lifetime.
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = Some(d);
        self
    }

    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Sets the clock-skew allowance.
    pub fn clock_skew(mut self, d: Duration) -> Self {
        self.clock_skew = d;
        self
    }

    /// Sets the refresh fraction of the idle timeout (0.0 to 0.5, see
    /// [`TokenConfig::refresh_fraction`](#structfield.refresh_fraction)).
    pub fn refresh_fraction(mut self, fraction: f64) -> Self {
        self.refresh_fraction = fraction.clamp(0.0, MAX_REFRESH_FRACTION);
        self
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Wrong length or characters outside the URL-safe base64 alphabet
    /// (truncated, padded, non-ASCII...).
    Malformed,
    /// A format version this release does not read.
    UnknownVersion,
    /// Signed with a key that is not in the ring.
    UnknownKey,
    /// The signature does not match: forged, altered, or issued for another
    /// cookie name.
    BadSignature,
    /// Older than the maximum lifetime.
    Expired,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Issued or last seen in the future, beyond the clock-skew allowance.
    FutureDated,
}

impl TokenError {
    /// True for a genuine token whose time is up (as opposed to one that
    /// was never valid).
    pub fn is_expiry(self) -> bool {
        matches!(self, TokenError::Expired | TokenError::Idle)
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "token is malformed",
            TokenError::UnknownVersion => "token has an unknown format version",
            TokenError::UnknownKey => "token was signed with a key that is not in the ring",
            TokenError::BadSignature => "token signature does not match",
            TokenError::Expired => "token is past its maximum lifetime",
            TokenError::Idle => "token is past its idle timeout",
            TokenError::FutureDated => "token is dated in the future",
        })
    }
}

impl std::error::Error for TokenError {}

/// A token whose signature and times checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedToken {
    /// Position in the key ring of the key that signed it (0 = newest).
    pub key: usize,
    /// The backend tag under that key.
    pub backend_tag: u64,
    /// The group tag under that key.
    pub group_tag: u32,
    /// Issue time, Unix seconds.
    pub issued: u32,
    /// Last-seen time, Unix seconds.
    pub last_seen: u32,
    /// True when it should be re-issued: last seen long enough ago, or
    /// signed with an older key.
    pub refresh_due: bool,
}

/// Seals and opens tokens under a key ring and a [`TokenConfig`].
#[derive(Clone, Debug)]
pub struct TokenCodec {
    keys: KeyRing,
    config: TokenConfig,
    /// Per key, the HMAC state with the cookie name already absorbed, so
    /// sealing and opening start from it instead of hashing the name again.
    bound: Vec<HmacSha256>,
    /// Refresh when `now - last_seen` reaches this many seconds.
    refresh_after: Option<u64>,
}

fn secs(t: Duration) -> u32 {
    t.as_secs().min(u64::from(u32::MAX)) as u32
}

impl TokenCodec {
    /// A codec for `config.name` under `keys`.
    pub fn new(keys: KeyRing, config: TokenConfig) -> Self {
        let fraction = config.refresh_fraction.clamp(0.0, MAX_REFRESH_FRACTION);
        let refresh_after = config
            .idle_timeout
            .map(|idle| (idle.as_secs_f64() * fraction) as u64);
        let bound = keys
            .keys
            .iter()
            .map(|k| {
                let mut mac = k.mac.clone();
                mac.update(&(config.name.len() as u64).to_be_bytes());
                mac.update(config.name.as_bytes());
                mac
            })
            .collect();
        Self {
            keys,
            config,
            bound,
            refresh_after,
        }
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The configuration.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    fn mac(&self, key: usize, signed: &[u8]) -> HmacSha256 {
        let mut mac = self.bound[key].clone();
        mac.update(signed);
        mac
    }

    /// Seals a token for a backend tag and group tag (under the signing
    /// key, see [`KeyRing::backend_tag`]), issued at `issued`, last seen at
    /// `now`. A `now` before `issued` (a replica whose clock is behind the
    /// one that issued the token) counts as `issued`, so that the token
    /// opens on every replica.
    pub fn seal(
        &self,
        backend_tag: u64,
        group_tag: u32,
        issued: Duration,
        now: Duration,
    ) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1] = self.keys.keys[0].id;
        raw[2..10].copy_from_slice(&backend_tag.to_be_bytes());
        raw[10..14].copy_from_slice(&group_tag.to_be_bytes());
        raw[14..18].copy_from_slice(&secs(issued).to_be_bytes());
        raw[18..22].copy_from_slice(&secs(now).max(secs(issued)).to_be_bytes());
        let tag = self.mac(0, &raw[..SIGNED_LEN]).finalize().into_bytes();
        raw[SIGNED_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Opens `text` at `now`: checks form, key, signature, then times.
    pub fn open(&self, text: &str, now: Duration) -> Result<OpenedToken, TokenError> {
        if text.len() != TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(text.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(TokenError::Malformed),
        }
        if raw[0] != VERSION {
            return Err(TokenError::UnknownVersion);
        }
        let (signed, tag) = raw.split_at(SIGNED_LEN);
        let mut known = false;
        let mut key = None;
        for (i, k) in self.keys.keys.iter().enumerate() {
            if k.id == raw[1] {
                known = true;
                if self.mac(i, signed).verify_truncated_left(tag).is_ok() {
                    key = Some(i);
                    break;
                }
            }
        }
        let key = match (key, known) {
            (Some(key), _) => key,
            (None, true) => return Err(TokenError::BadSignature),
            (None, false) => return Err(TokenError::UnknownKey),
        };
        let field = |at: usize| u32::from_be_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
        let issued = field(14);
        let last_seen = field(18);
        let now_s = u64::from(secs(now));
        let skew = self.config.clock_skew.as_secs();
        let latest = now_s.saturating_add(skew);
        if u64::from(issued) > latest || u64::from(last_seen) > latest || last_seen < issued {
            return Err(TokenError::FutureDated);
        }
        if let Some(max) = self.config.max_lifetime {
            if now_s
                > u64::from(issued)
                    .saturating_add(max.as_secs())
                    .saturating_add(skew)
            {
                return Err(TokenError::Expired);
            }
        }
        let idle_for = now_s.saturating_sub(u64::from(last_seen));
        if let Some(idle) = self.config.idle_timeout {
            if idle_for > idle.as_secs().saturating_add(skew) {
                return Err(TokenError::Idle);
            }
        }
        let refresh_due = key != 0 || self.refresh_after.is_some_and(|after| idle_for >= after);
        Ok(OpenedToken {
            key,
            backend_tag: u64::from_be_bytes(raw[2..10].try_into().expect("8 bytes")),
            group_tag: u32::from_be_bytes(raw[10..14].try_into().expect("4 bytes")),
            issued,
            last_seen,
            refresh_due,
        })
    }

    /// Seconds a cookie holding a token sealed at `now` (issued at
    /// `issued`) should live in the browser: the tighter of the remaining
    /// lifetime and the idle timeout; `None` for a session cookie.
    pub fn max_age(&self, issued: Duration, now: Duration) -> Option<Duration> {
        let remaining = self
            .config
            .max_lifetime
            .map(|max| issued.saturating_add(max).saturating_sub(now.max(issued)));
        match (remaining, self.config.idle_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
