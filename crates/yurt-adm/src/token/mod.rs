//! Bootstrap tokens: Secrets `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`, as `kubeadm token` 1.20 writes and reads them, so
//! either tool lists, uses and deletes the other's. A token `<id>.<secret>` (6 and 16
//! characters of `[a-z0-9]`) authenticates as `system:bootstrap:<id>` in the groups
//! `system:bootstrappers` plus its extra groups (usage `authentication`), and lets the
//! bootstrap signer sign the `cluster-info` ConfigMap with it (usage `signing`), which
//! is how a joining host checks it talks to the right API server.

mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};

pub use table::table;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Where bootstrap token Secrets live.
pub const NAMESPACE: &str = "kube-system";
/// The extra group `kubeadm token create` gives new tokens: the group kubeadm's RBAC
/// lets create node CSRs and have them approved.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
/// The usages a token may have.
pub const USAGES: [&str; 2] = ["signing", "authentication"];
/// How long a new token lives unless told otherwise (kubeadm's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token string that is not `<6 of [a-z0-9]>.<16 of [a-z0-9]>`.
    #[error("token {0:?} is not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Malformed(String),
    /// A token ID that is not 6 characters of `[a-z0-9]`.
    #[error("token ID {0:?} is not 6 characters of [a-z0-9] (nor a whole token)")]
    MalformedId(String),
    /// A usage other than `signing` and `authentication`.
    #[error("usage {0:?} is not one of: signing, authentication")]
    Usage(String),
    /// An extra group outside `system:bootstrappers:`.
    #[error(
        "group {0:?} must start with \"system:bootstrappers:\" and be made of [a-z0-9:-], ending in [a-z0-9]"
    )]
    Group(String),
    /// A Secret that is not a readable bootstrap token.
    #[error("secret {name}: {reason}")]
    Secret {
        /// The Secret's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No token with that ID.
    #[error("bootstrap token {0:?} not found")]
    NotFound(String),
    /// Extra groups on a token that cannot authenticate.
    #[error("token groups cannot be specified unless the usage includes \"authentication\"")]
    GroupsWithoutAuthentication,
    /// A TTL whose expiry a timestamp cannot hold.
    #[error("a TTL of {0:?} expires past the year 9999")]
    Ttl(Duration),
    /// The random source failed.
    #[error("no randomness for a token secret")]
    Random,
    /// The API refused or failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API's error.
        source: kube::Error,
    },
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A token `<id>.<secret>`. Its `Debug` form hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenString {
    id: String,
    secret: String,
}

impl TokenString {
    /// A new random token from the operating system's random source.
    ///
    /// # Errors
    /// [`TokenError::Random`] if the random source fails.
    pub fn generate() -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let mut chars = Vec::with_capacity(ID_LEN + SECRET_LEN);
        while chars.len() < ID_LEN + SECRET_LEN {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&rng, &mut bytes).map_err(|_| TokenError::Random)?;
            // Rejection sampling keeps every character equally likely (252 = 7 × 36).
            chars.extend(
                bytes
                    .iter()
                    .filter(|b| **b < 252)
                    .map(|b| ALPHABET[usize::from(*b % 36)]),
            );
        }
        chars.truncate(ID_LEN + SECRET_LEN);
        let (id, secret) = chars.split_at(ID_LEN);
        Ok(Self {
            id: String::from_utf8_lossy(id).into_owned(),
            secret: String::from_utf8_lossy(secret).into_owned(),
        })
    }

    /// The public part: the Secret's name is `bootstrap-token-<id>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl FromStr for TokenString {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        match s.split_once('.') {
            Some((id, secret))
                if is_token_part(id, ID_LEN) && is_token_part(secret, SECRET_LEN) =>
            {
                Ok(Self {
                    id: id.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            _ => Err(TokenError::Malformed(s.to_owned())),
        }
    }
}

impl fmt::Display for TokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for TokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<secret>", self.id)
    }
}

/// The ID named by `id_or_token`: a bare ID, or a whole token.
///
/// # Errors
/// Neither a token ID nor a token.
pub fn token_id(id_or_token: &str) -> Result<String, TokenError> {
    if is_token_part(id_or_token, ID_LEN) {
        return Ok(id_or_token.to_owned());
    }
    id_or_token
        .parse::<TokenString>()
        .map(|t| t.id)
        .map_err(|_| TokenError::MalformedId(id_or_token.to_owned()))
}

/// The Secret name of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// Checks usages are among [`USAGES`].
///
/// # Errors
/// The first unknown usage.
pub fn validate_usages(usages: &[String]) -> Result<(), TokenError> {
    match usages.iter().find(|u| !USAGES.contains(&u.as_str())) {
        Some(bad) => Err(TokenError::Usage(bad.clone())),
        None => Ok(()),
    }
}

/// Checks extra groups are `system:bootstrappers:` groups, as the API server's
/// bootstrap authenticator requires (`^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$`).
///
/// # Errors
/// The first group that is not.
pub fn validate_groups(groups: &[String]) -> Result<(), TokenError> {
    let valid = |g: &str| {
        g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 256
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
                && rest
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    };
    match groups.iter().find(|g| !valid(g)) {
        Some(bad) => Err(TokenError::Group(bad.clone())),
        None => Ok(()),
    }
}

/// A bootstrap token and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The token.
    pub token: TokenString,
    /// Free text for whoever lists tokens.
    pub description: String,
    /// When it expires (the token cleaner deletes it then); `None`: never.
    pub expires: Option<Timestamp>,
    /// Among [`USAGES`].
    pub usages: Vec<String>,
    /// Extra groups beyond `system:bootstrappers`.
    pub groups: Vec<String>,
}

const KEY_ID: &str = "token-id";
const KEY_SECRET: &str = "token-secret";
const KEY_EXPIRATION: &str = "expiration";
const KEY_DESCRIPTION: &str = "description";
const KEY_GROUPS: &str = "auth-extra-groups";
const USAGE_PREFIX: &str = "usage-bootstrap-";

impl BootstrapToken {
    /// A token with kubeadm's defaults: both usages, [`DEFAULT_GROUP`], expiring `ttl`
    /// from `now` (`None` or zero: never).
    ///
    /// # Errors
    /// [`TokenError::Ttl`] for an expiry past what a timestamp can hold (never "no
    /// expiry" instead).
    pub fn new(
        token: TokenString,
        ttl: Option<Duration>,
        now: Timestamp,
    ) -> Result<Self, TokenError> {
        let expires = match ttl.filter(|t| !t.is_zero()) {
            None => None,
            Some(t) => Some(
                jiff::SignedDuration::try_from(t)
                    .ok()
                    .and_then(|t| now.checked_add(t).ok())
                    .ok_or(TokenError::Ttl(t))?,
            ),
        };
        // Sorted, as they read back from a Secret.
        let mut usages: Vec<String> = USAGES.iter().map(|u| (*u).to_owned()).collect();
        usages.sort();
        Ok(Self {
            token,
            description: String::new(),
            expires,
            usages,
            groups: vec![DEFAULT_GROUP.to_owned()],
        })
    }

    /// Checks usages and groups as kubeadm does: known usages, `system:bootstrappers:`
    /// groups, and groups only for a token that may authenticate.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), TokenError> {
        validate_usages(&self.usages)?;
        validate_groups(&self.groups)?;
        if !self.groups.is_empty() && !self.usages.iter().any(|u| u == "authentication") {
            return Err(TokenError::GroupsWithoutAuthentication);
        }
        Ok(())
    }

    /// The Secret kubeadm would write for this token.
    pub fn to_secret(&self) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        };
        put(KEY_ID, self.token.id());
        put(KEY_SECRET, self.token.secret());
        if !self.description.is_empty() {
            put(KEY_DESCRIPTION, &self.description);
        }
        if let Some(expires) = self.expires {
            // RFC 3339 in UTC, to the second, as Go's time.RFC3339 writes it.
            put(
                KEY_EXPIRATION,
                &expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
        }
        for usage in &self.usages {
            put(&format!("{USAGE_PREFIX}{usage}"), "true");
        }
        if !self.groups.is_empty() {
            put(KEY_GROUPS, &self.groups.join(","));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(self.token.id())),
                namespace: Some(NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The token a bootstrap token Secret holds.
    ///
    /// # Errors
    /// [`TokenError::Secret`] for a Secret that is not a readable bootstrap token.
    pub fn from_secret(secret: &Secret) -> Result<Self, TokenError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let bad = |reason: String| TokenError::Secret {
            name: name.clone(),
            reason,
        };
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let id = get(KEY_ID).ok_or_else(|| bad("no token-id".into()))?;
        if name != secret_name(&id) {
            return Err(bad(format!("not named {}", secret_name(&id))));
        }
        let secret_part = get(KEY_SECRET).ok_or_else(|| bad("no token-secret".into()))?;
        let token: TokenString = format!("{id}.{secret_part}")
            .parse()
            .map_err(|_| bad("malformed token-id or token-secret".into()))?;
        let expires = match get(KEY_EXPIRATION) {
            Some(text) => Some(
                text.parse::<Timestamp>()
                    .map_err(|e| bad(format!("expiration {text:?}: {e}")))?,
            ),
            None => None,
        };
        let usages = data
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(USAGE_PREFIX)?, v)))
            .filter(|(_, v)| v.0 == b"true")
            .map(|(u, _)| u.to_owned())
            .collect();
        let groups = get(KEY_GROUPS)
            .map(|g| {
                g.split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            token,
            description: get(KEY_DESCRIPTION).unwrap_or_default(),
            expires,
            usages,
            groups,
        })
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> TokenError {
    let what = what.into();
    move |source| TokenError::Api { what, source }
}

/// Creates the token's Secret, or replaces it if the ID is taken (as `kubeadm token
/// create` does).
///
/// # Errors
/// What [`BootstrapToken::validate`] refuses; API errors.
pub async fn create(client: &kube::Client, token: &BootstrapToken) -> Result<(), TokenError> {
    token.validate()?;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let secret = token.to_secret();
    let name = secret_name(token.token.id());
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let current = secrets
                .get(&name)
                .await
                .map_err(api_error(format!("read secret {NAMESPACE}/{name}")))?;
            let mut replacement = secret;
            replacement.metadata.resource_version = current.metadata.resource_version;
            secrets
                .replace(&name, &PostParams::default(), &replacement)
                .await
                .map(|_| ())
                .map_err(api_error(format!("replace secret {NAMESPACE}/{name}")))
        }
        Err(e) => Err(api_error(format!("create secret {NAMESPACE}/{name}"))(e)),
    }
}

/// Every bootstrap token in the cluster, and a line for each token Secret that cannot
/// be read (listed, as kubeadm does, rather than failing the whole list).
///
/// # Errors
/// API errors.
pub async fn list(client: &kube::Client) -> Result<(Vec<BootstrapToken>, Vec<String>), TokenError> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let found = secrets
        .list(&ListParams::default().fields(&format!("type={SECRET_TYPE}")))
        .await
        .map_err(api_error("list bootstrap token secrets"))?;
    let (mut tokens, mut unreadable) = (Vec::new(), Vec::new());
    for secret in &found.items {
        match BootstrapToken::from_secret(secret) {
            Ok(token) => tokens.push(token),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    Ok((tokens, unreadable))
}

/// Deletes the token named by `id_or_token` (an ID or a whole token).
///
/// # Errors
/// A malformed ID, no such token, API errors.
pub async fn delete(client: &kube::Client, id_or_token: &str) -> Result<String, TokenError> {
    let id = token_id(id_or_token)?;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let name = secret_name(&id);
    match secrets.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(id),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(TokenError::NotFound(id)),
        Err(e) => Err(api_error(format!("delete secret {NAMESPACE}/{name}"))(e)),
    }
}

#[cfg(test)]
mod tests;
