//! Downloading images by URL (clip_embed_url and the batch functions): the address policy, a capped
//! streaming download with retries, and the per-backend runtime whose threads do the network work.
//!
//! No Postgres here. The threads of [`Fetcher`] never call into Postgres: the SQL layer waits on its own
//! thread, polling for query cancel, and dropping a [`Downloads`] aborts everything still in flight.
//!
//! The fence, because a function that fetches URLs from inside the database server is otherwise an open
//! door into the server's network:
//! - http and https only; the URL's host must match `pg_clip.allowed_hosts` when that is set;
//! - every address is classified ([`classify`]) and loopback, private, link-local, CGNAT, multicast,
//!   unspecified, reserved and cloud-metadata addresses are refused unless a superuser allowed them. Names
//!   are checked in our DNS resolver, whose answer is the very list the connector connects to (no gap for
//!   DNS rebinding); IP literals, which the connector does not resolve, are checked before the request;
//! - redirects are followed here, not by reqwest, so each hop goes through the same checks;
//! - no proxy from the environment (it would connect on our behalf to anything);
//! - a byte cap enforced while streaming, whatever Content-Length says, and magic-byte sniffing that stops
//!   reading an HTML error page as soon as it shows itself.
#![forbid(unsafe_code)]

use once_cell::sync::OnceCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::Url;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{PgClipError, Result};
use crate::image::format::{sniff, Sniffed};

/// Why an address is refused by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    Reserved,
    CloudMetadata,
}

impl AddressClass {
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::SharedCgnat => "a carrier-grade NAT (shared) address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Reserved => "a reserved or documentation address",
            AddressClass::CloudMetadata => "a cloud metadata service address",
        }
    }
}

/// Instance-metadata endpoints (AWS, GCP, Azure, OpenStack: 169.254.169.254; ECS tasks: 169.254.170.2;
/// Alibaba: 100.100.100.200; AWS IPv6: fd00:ec2::254). They hand out cloud credentials, so they stay
/// refused even with pg_clip.allow_private_addresses on.
const METADATA_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(169, 254, 170, 2), Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// The class of an address that is not publicly routable, or None for a public one.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let bits = u32::from(ip);
    let within = |net: [u8; 4], prefix: u32| {
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        bits & mask == u32::from_be_bytes(net) & mask
    };
    if METADATA_V4.contains(&ip) {
        return Some(CloudMetadata);
    }
    let class = if within([0, 0, 0, 0], 8) {
        Unspecified
    } else if within([127, 0, 0, 0], 8) {
        Loopback
    } else if within([10, 0, 0, 0], 8) || within([172, 16, 0, 0], 12) || within([192, 168, 0, 0], 16) {
        Private
    } else if within([169, 254, 0, 0], 16) {
        LinkLocal
    } else if within([100, 64, 0, 0], 10) {
        SharedCgnat
    } else if within([224, 0, 0, 0], 4) {
        Multicast
    } else if within([240, 0, 0, 0], 4)
        || within([192, 0, 0, 0], 24)
        || within([192, 0, 2, 0], 24)
        || within([198, 18, 0, 0], 15)
        || within([198, 51, 100, 0], 24)
        || within([203, 0, 113, 0], 24)
    {
        Reserved // includes 255.255.255.255
    } else {
        return None;
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if ip == METADATA_V6 {
        return Some(CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    // Forms that carry an IPv4 address, which is what the packets reach: mapped (::ffff:a.b.c.d),
    // the deprecated compatible form (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(s[6], s[7])).or(Some(Reserved));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded_v4(s[1], s[2]));
    }
    let class = if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Private // unique local fc00::/7, and the deprecated site-local fec0::/10
    } else if s[0] & 0xffc0 == 0xfe80 {
        LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Multicast
    } else if (s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] == 0)) || s[..4] == [0x0100, 0, 0, 0] {
        Reserved // documentation 2001:db8::/32, Teredo 2001::/32 (tunnels to an IPv4 peer), discard 100::/64
    } else {
        return None;
    };
    Some(class)
}

/// Which URLs and addresses may be fetched, from the superuser-only settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FetchPolicy {
    /// pg_clip.allow_private_addresses: every refused class but cloud metadata becomes reachable.
    pub allow_private_addresses: bool,
    /// pg_clip.allowed_private_networks: exactly these networks become reachable (metadata too if listed).
    pub allowed_private_networks: Vec<IpNet>,
    /// pg_clip.allowed_hosts, lower-cased: "host" matches that host, "*.example.com" its subdomains.
    /// Empty allows any host.
    pub allowed_hosts: Vec<String>,
}

impl FetchPolicy {
    /// Parses pg_clip.allowed_private_networks: networks ("10.1.0.0/16") or single addresses, separated
    /// by commas or spaces.
    pub fn parse_networks(text: &str) -> Result<Vec<IpNet>> {
        items(text)
            .map(|item| {
                item.parse::<IpNet>().or_else(|_| item.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                    PgClipError::BadSetting {
                        setting: "pg_clip.allowed_private_networks",
                        reason: format!("{item:?} is not an IP network such as 10.1.2.0/24 or an address"),
                    }
                })
            })
            .collect()
    }

    /// Parses pg_clip.allowed_hosts: host names, "*.suffix" patterns or IP addresses, comma-separated.
    pub fn parse_hosts(text: &str) -> Result<Vec<String>> {
        items(text)
            .map(|item| {
                let host = item.to_ascii_lowercase();
                let name = host.strip_prefix("*.").unwrap_or(&host);
                let plausible = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
                if plausible {
                    Ok(host)
                } else {
                    Err(PgClipError::BadSetting {
                        setting: "pg_clip.allowed_hosts",
                        reason: format!("{item:?} is not a host name, *.domain pattern or address"),
                    })
                }
            })
            .collect()
    }

    /// Ok when `ip` may be connected to, else the class that refuses it.
    pub fn check_address(&self, ip: IpAddr) -> std::result::Result<(), AddressClass> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match classify(ip) {
            None => Ok(()),
            Some(_) if self.allowed_private_networks.iter().any(|net| net.contains(&ip)) => Ok(()),
            Some(AddressClass::CloudMetadata) => Err(AddressClass::CloudMetadata),
            Some(_) if self.allow_private_addresses => Ok(()),
            Some(class) => Err(class),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_hosts.is_empty()
            || self.allowed_hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix) && {
                        host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    }
                }
                None => pattern.trim_start_matches('[').trim_end_matches(']') == host,
            })
    }

    /// The checks a URL passes before any request: scheme, allowed host, and an IP-literal host's class
    /// (the connector does not resolve literals, so the resolver's check would not see them).
    pub fn check_url(&self, url: &Url) -> Result<()> {
        let shown = redact(url);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PgClipError::FetchRefused {
                url: shown,
                reason: format!("scheme {:?} is not allowed; only http and https URLs are fetched", url.scheme()),
                hint: None,
            });
        }
        let host = url.host_str().unwrap_or_default();
        if !self.host_allowed(host) {
            return Err(PgClipError::FetchRefused {
                url: shown,
                reason: format!("host {host} is not in pg_clip.allowed_hosts"),
                hint: Some("A superuser can add the host to pg_clip.allowed_hosts.".into()),
            });
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal {
            self.check_address(ip).map_err(|class| refused(&shown, ip, class))?;
        }
        Ok(())
    }
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', ' ', '\t', '\n']).map(str::trim).filter(|s| !s.is_empty())
}

fn refused(shown: &str, ip: IpAddr, class: AddressClass) -> PgClipError {
    let hint = if class == AddressClass::CloudMetadata {
        "Cloud metadata addresses stay refused with pg_clip.allow_private_addresses; list the address in \
         pg_clip.allowed_private_networks if it really must be fetched."
    } else {
        "A superuser can allow it with pg_clip.allowed_private_networks (this network only) or \
         pg_clip.allow_private_addresses (every private address)."
    };
    PgClipError::FetchRefused {
        url: shown.to_string(),
        reason: format!("{ip} is {}", class.describe()),
        hint: Some(hint.into()),
    }
}

/// The URL as error messages show it: without user info, query or fragment, which may carry secrets
/// (a presigned S3 URL's signature) that must not reach the server log.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let hidden = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if hidden {
        text.push_str("?...");
    }
    text
}

/// A URL string as shown when it does not even parse: at most 200 characters, query cut.
fn redact_text(text: &str) -> String {
    let cut = text.split(['?', '#']).next().unwrap_or(text);
    let mut shown: String = cut.chars().take(200).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    shown
}

/// What runs on a decode thread after each download (the caller's decoding and preprocessing).
pub type Process<T> = Arc<dyn Fn(&[u8]) -> Result<T> + Send + Sync>;

/// Everything a download depends on, from the settings; one client is kept per distinct value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchConfig {
    pub policy: FetchPolicy,
    /// pg_clip.fetch_connect_timeout
    pub connect_timeout: Duration,
    /// pg_clip.fetch_timeout: one attempt, every redirect hop and the whole body included.
    pub timeout: Duration,
    /// pg_clip.fetch_retries: further attempts after a timeout, a network error, 5xx, 429 or 408.
    pub retries: u32,
    /// pg_clip.fetch_max_redirects
    pub max_redirects: u32,
    /// pg_clip.max_image_bytes, enforced while streaming.
    pub max_bytes: usize,
    /// Downloads in flight at once (pg_clip.fetch_concurrency or the batch function's argument).
    pub concurrency: usize,
}

/// A finished download.
#[derive(Debug)]
pub struct Download {
    pub bytes: Vec<u8>,
    pub status: u16,
    /// The URL asked for, as messages show it (see `redact`).
    pub shown_url: String,
}

/// One attempt's failure, and whether another attempt may succeed.
struct AttemptError {
    error: PgClipError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl From<PgClipError> for AttemptError {
    fn from(error: PgClipError) -> Self {
        AttemptError { error, retryable: false, retry_after: None }
    }
}

/// How far into a body we read before sniffing it: enough for every magic number and for text markers.
const SNIFF_LEN: usize = 1024;

/// Downloads `url_text` with the policy, caps and retries of `config`. Returns the bytes, or the error
/// of the last attempt with the number of attempts made.
pub async fn download(client: &reqwest::Client, url_text: &str, config: &FetchConfig) -> (Result<Download>, u32) {
    if url_text.trim().is_empty() {
        return (Err(PgClipError::EmptyInput { what: "URL" }), 0);
    }
    let url = match Url::parse(url_text.trim()) {
        Ok(url) => url,
        Err(e) => return (Err(PgClipError::InvalidUrl { url: redact_text(url_text), reason: e.to_string() }), 0),
    };
    if url.host_str().is_none_or(str::is_empty) {
        let error = if matches!(url.scheme(), "http" | "https") {
            PgClipError::InvalidUrl { url: redact(&url), reason: "it has no host".into() }
        } else {
            // file:///etc/passwd and friends: refused by policy, never read.
            match config.policy.check_url(&url) {
                Err(e) => e,
                Ok(()) => PgClipError::InvalidUrl { url: redact(&url), reason: "it has no host".into() },
            }
        };
        return (Err(error), 0);
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match tokio::time::timeout(config.timeout, attempt(client, &url, config)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AttemptError {
                error: PgClipError::FetchNetwork {
                    url: redact(&url),
                    reason: format!("timed out after {} (pg_clip.fetch_timeout)", show_duration(config.timeout)),
                },
                retryable: true,
                retry_after: None,
            }),
        };
        match outcome {
            Ok(download) => return (Ok(download), attempts),
            Err(e) if e.retryable && attempts <= config.retries => {
                tokio::time::sleep(backoff(&url, attempts, e.retry_after)).await;
            }
            Err(e) => return (Err(e.error), attempts),
        }
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Exponential backoff with jitter (250 ms, 500 ms, 1 s ... capped at 5 s, each 50-150%), or the server's
/// Retry-After when it asks for at most 10 s. Jitter keeps a batch's retries from arriving in one burst.
fn backoff(url: &Url, attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after.filter(|d| *d <= Duration::from_secs(10)) {
        return wait;
    }
    let base = Duration::from_millis(250).saturating_mul(1 << (attempt - 1).min(5)).min(Duration::from_secs(5));
    let mut hasher = DefaultHasher::new();
    url.as_str().hash(&mut hasher);
    attempt.hash(&mut hasher);
    Instant::now().hash(&mut hasher);
    let jitter = 0.5 + (hasher.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

/// One attempt: follows redirects (each hop checked), then streams the body under the byte cap.
async fn attempt(
    client: &reqwest::Client,
    start: &Url,
    config: &FetchConfig,
) -> std::result::Result<Download, AttemptError> {
    let mut url = start.clone();
    let mut hops = 0;
    let mut response = loop {
        config.policy.check_url(&url)?;
        let response = client.get(url.clone()).send().await.map_err(|e| network_error(&url, &e))?;
        let status = response.status();
        if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
            break response;
        }
        let location = response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
        let Some(next) = location.and_then(|l| url.join(l).ok()) else {
            return Err(PgClipError::FetchStatus {
                url: redact(&url),
                status: status.as_u16(),
                reason: "redirect without a usable Location".into(),
            }
            .into());
        };
        hops += 1;
        if hops > config.max_redirects {
            return Err(PgClipError::FetchLimit {
                url: redact(start),
                what: format!("more than {} redirects", config.max_redirects),
                setting: "pg_clip.fetch_max_redirects",
            }
            .into());
        }
        url = next;
    };

    let status = response.status();
    let shown = redact(&url);
    if !status.is_success() {
        let code = status.as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(AttemptError {
            error: PgClipError::FetchStatus {
                url: shown,
                status: code,
                reason: status.canonical_reason().unwrap_or_default().to_string(),
            },
            retryable: code >= 500 || code == 429 || code == 408,
            retry_after,
        });
    }
    let too_large = |what: String| {
        AttemptError::from(PgClipError::FetchLimit { url: shown.clone(), what, setting: "pg_clip.max_image_bytes" })
    };
    if let Some(declared) = response.content_length().filter(|n| *n > config.max_bytes as u64) {
        return Err(too_large(format!(
            "the response declares {declared} bytes, more than the limit of {} bytes",
            config.max_bytes
        )));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());

    let mut body: Vec<u8> =
        Vec::with_capacity(response.content_length().unwrap_or(64 * 1024).min(config.max_bytes as u64) as usize);
    let mut sniffed = false;
    loop {
        let chunk = response.chunk().await.map_err(|e| network_error(&url, &e))?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > config.max_bytes {
            return Err(too_large(format!("the response is larger than the limit of {} bytes", config.max_bytes)));
        }
        body.extend_from_slice(&chunk);
        if !sniffed && body.len() >= SNIFF_LEN {
            check_is_image(&body, content_type.as_deref(), &shown, status.as_u16())?;
            sniffed = true;
        }
    }
    if !sniffed {
        check_is_image(&body, content_type.as_deref(), &shown, status.as_u16())?;
    }
    Ok(Download { bytes: body, status: status.as_u16(), shown_url: redact(start) })
}

/// Refuses a body whose first bytes are not an image we decode, naming what came back instead.
fn check_is_image(head: &[u8], content_type: Option<&str>, shown: &str, status: u16) -> Result<()> {
    let described = match sniff(head) {
        Sniffed::Decodable(..) => return Ok(()),
        Sniffed::UnsupportedImage(format) => {
            return Err(PgClipError::Fetched {
                url: shown.to_string(),
                status,
                inner: Box::new(PgClipError::UnsupportedImage { format: format.to_string() }),
            })
        }
        Sniffed::NotAnImage(what) => what.to_string(),
        Sniffed::Unknown if head.is_empty() => "an empty body".to_string(),
        Sniffed::Unknown => "bytes of no known image format".to_string(),
    };
    let preview: String = String::from_utf8_lossy(&head[..head.len().min(60)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let reason = format!(
        "the server sent {described} (Content-Type {}, starting {:?}), not an image",
        content_type.unwrap_or("not given"),
        preview.trim()
    );
    Err(PgClipError::Fetched { url: shown.to_string(), status, inner: Box::new(PgClipError::invalid_image(reason)) })
}

/// Our resolver's refusal, found again in reqwest's error chain.
#[derive(Debug)]
struct AddressRefused {
    host: String,
    ip: IpAddr,
    class: AddressClass,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to {}, {}", self.host, self.ip, self.class.describe())
    }
}

impl std::error::Error for AddressRefused {}

fn network_error(url: &Url, error: &reqwest::Error) -> AttemptError {
    let shown = redact(url);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut causes: Vec<String> = Vec::new();
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<AddressRefused>() {
            let mut error = refused(&shown, refusal.ip, refusal.class);
            if let PgClipError::FetchRefused { reason, .. } = &mut error {
                *reason = refusal.to_string();
            }
            return error.into();
        }
        let text = e.to_string();
        // reqwest repeats the URL (with its query) in its own message; the causes below it are what matter.
        if !text.contains(url.as_str()) && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = e.source();
    }
    let phase = if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "connection failed while reading the body"
    } else {
        "request failed"
    };
    let reason = if causes.is_empty() { phase.to_string() } else { format!("{phase}: {}", causes.join(": ")) };
    AttemptError { error: PgClipError::FetchNetwork { url: shown, reason }, retryable: true, retry_after: None }
}

/// Resolves names with the system resolver and keeps only the addresses the policy allows; the connector
/// connects to exactly this list.
struct PolicyResolver {
    policy: FetchPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.check_address(addr.ip()) {
                    Ok(()) => true,
                    Err(class) => {
                        refusal.get_or_insert(AddressRefused { host: host.clone(), ip: addr.ip(), class });
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refusal) {
                (true, Some(refusal)) => Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

fn build_client(config: &FetchConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .dns_resolver(Arc::new(PolicyResolver { policy: config.policy.clone() }))
        .user_agent(concat!("pg_clip/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| PgClipError::runtime("building the HTTP client", e))
}

/// The backend's network runtime: a few threads, made on first use (never in the postmaster) with every
/// signal blocked, and the HTTP client for the settings last used.
pub struct Fetcher {
    runtime: tokio::runtime::Runtime,
    client: Mutex<Option<(FetchConfig, reqwest::Client)>>,
}

static FETCHER: OnceCell<Fetcher> = OnceCell::new();

/// Threads for the network work and the image decoding done after each download.
const WORKER_THREADS: usize = 2;
const DECODE_THREADS: usize = 2;

impl Fetcher {
    pub fn get() -> Result<&'static Fetcher> {
        FETCHER.get_or_try_init(|| {
            let runtime = crate::model::runtime::with_signals_blocked(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .max_blocking_threads(DECODE_THREADS + 2)
                    .thread_name("pg_clip-fetch")
                    .on_thread_start(crate::model::runtime::block_all_signals_in_this_thread)
                    .enable_io()
                    .enable_time()
                    .build()
            })
            .map_err(|e| PgClipError::runtime("starting the fetch threads", e))?;
            Ok(Fetcher { runtime, client: Mutex::new(None) })
        })
    }

    fn client(&self, config: &FetchConfig) -> Result<reqwest::Client> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, client)) = slot.as_ref() {
            if current == config {
                return Ok(client.clone());
            }
        }
        // The client's pool, resolver and timeouts belong to the runtime it is used on.
        let client = {
            let _entered = self.runtime.enter();
            build_client(config)?
        };
        *slot = Some((config.clone(), client.clone()));
        Ok(client)
    }

    /// Starts downloading `urls`, at most `config.concurrency` at once, each body then handed to
    /// `process` on a decode thread. Results arrive in `downloads` in completion order, tagged with the
    /// caller's `ids`.
    pub fn start<T: Send + 'static>(
        &self,
        downloads: &mut Downloads<T>,
        jobs: Vec<(u64, String)>,
        config: &FetchConfig,
        process: Process<T>,
    ) -> Result<()> {
        let client = self.client(config)?;
        if downloads.config.as_ref() != Some(config) {
            downloads.semaphore = Arc::new(Semaphore::new(config.concurrency.max(1)));
            downloads.config = Some(config.clone());
        }
        for (id, url) in jobs {
            let reply = Reply { id, tx: Some(downloads.tx.clone()), permit: None, status: None, attempts: 0 };
            let (client, config, process, semaphore) =
                (client.clone(), config.clone(), process.clone(), downloads.semaphore.clone());
            let handle = self.runtime.spawn(async move {
                let mut reply = reply;
                let Ok(permit) = semaphore.acquire_owned().await else { return };
                reply.permit = Some(permit);
                let (result, attempts) = download(&client, &url, &config).await;
                reply.attempts = attempts;
                let Download { bytes, status, shown_url: shown } = match result {
                    Ok(download) => download,
                    Err(e) => return reply.send(Err(e)),
                };
                reply.status = Some(status);
                let decoded = tokio::task::spawn_blocking(move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(&bytes)))
                })
                .await;
                let result = match decoded {
                    Ok(Ok(Ok(value))) => Ok(value),
                    Ok(Ok(Err(inner))) => Err(PgClipError::Fetched { url: shown, status, inner: Box::new(inner) }),
                    Ok(Err(panic)) => Err(PgClipError::runtime(
                        "decoding a download",
                        format!("internal error: {}", crate::model::runtime::panic_message(&panic)),
                    )),
                    Err(e) => Err(PgClipError::runtime("decoding a download", e)),
                };
                reply.send(result)
            });
            downloads.handles.push(handle);
            downloads.outstanding += 1;
        }
        Ok(())
    }
}

/// One download's result, holding its concurrency slot until the consumer drops it: the slots bound the
/// memory of bodies and tensors waiting for inference, not only of downloads in progress.
pub struct Finished<T> {
    pub id: u64,
    pub result: Result<T>,
    pub http_status: Option<u16>,
    pub attempts: u32,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Sends the result exactly once; if the task ends any other way (a panic), its Drop still reports it, so
/// the consumer never waits for a result that cannot come.
struct Reply<T> {
    id: u64,
    tx: Option<mpsc::Sender<Finished<T>>>,
    permit: Option<OwnedSemaphorePermit>,
    status: Option<u16>,
    attempts: u32,
}

impl<T> Reply<T> {
    fn send(mut self, result: Result<T>) {
        self.deliver(result);
    }

    fn deliver(&mut self, result: Result<T>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Finished {
                id: self.id,
                result,
                http_status: self.status,
                attempts: self.attempts,
                _permit: self.permit.take(),
            });
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        self.deliver(Err(PgClipError::runtime("downloading", "the download task ended unexpectedly")));
    }
}

/// Downloads in flight and finished ones not yet taken. Dropping it aborts every task still running
/// (query cancel, an error, the end of the backend's batch), closing their connections.
pub struct Downloads<T> {
    tx: mpsc::Sender<Finished<T>>,
    rx: mpsc::Receiver<Finished<T>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    semaphore: Arc<Semaphore>,
    config: Option<FetchConfig>,
    outstanding: usize,
}

impl<T> Default for Downloads<T> {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Downloads { tx, rx, handles: Vec::new(), semaphore: Arc::new(Semaphore::new(1)), config: None, outstanding: 0 }
    }
}

impl<T> Downloads<T> {
    /// Results not yet taken, including downloads still in progress.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The next finished download, waiting at most `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<Finished<T>> {
        if self.outstanding == 0 {
            return None;
        }
        let item = if wait.is_zero() { self.rx.try_recv().ok() } else { self.rx.recv_timeout(wait).ok() };
        if item.is_some() {
            self.outstanding -= 1;
            if self.outstanding == 0 {
                self.handles.clear();
            } else if self.handles.len() > 256 {
                self.handles.retain(|h| !h.is_finished());
            }
        }
        item
    }
}

impl<T> Drop for Downloads<T> {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        use AddressClass::*;
        let cases = [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("169.254.1.1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("100.100.100.200", Some(CloudMetadata)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.128.0.1", None),
            ("224.0.0.1", Some(Multicast)),
            ("0.0.0.0", Some(Unspecified)),
            ("255.255.255.255", Some(Reserved)),
            ("203.0.113.5", Some(Reserved)),
            ("8.8.8.8", None),
            ("52.216.0.1", None),
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("2002:7f00:1::", Some(Loopback)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fd12::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Reserved)),
            ("2606:4700::1111", None),
        ];
        for (text, expected) in cases {
            assert_eq!(classify(ip(text)), expected, "{text}");
        }
    }

    #[test]
    fn policy_switches() {
        let strict = FetchPolicy::default();
        assert_eq!(strict.check_address(ip("10.0.0.1")), Err(AddressClass::Private));
        assert_eq!(strict.check_address(ip("8.8.8.8")), Ok(()));
        let open = FetchPolicy { allow_private_addresses: true, ..Default::default() };
        assert_eq!(open.check_address(ip("10.0.0.1")), Ok(()));
        assert_eq!(open.check_address(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(open.check_address(ip("169.254.169.254")), Err(AddressClass::CloudMetadata));
        let one = FetchPolicy {
            allowed_private_networks: FetchPolicy::parse_networks("127.0.0.2/32, 10.9.0.0/16").unwrap(),
            ..Default::default()
        };
        assert_eq!(one.check_address(ip("127.0.0.2")), Ok(()));
        assert_eq!(one.check_address(ip("10.9.3.4")), Ok(()));
        assert_eq!(one.check_address(ip("127.0.0.1")), Err(AddressClass::Loopback));
        assert!(FetchPolicy::parse_networks("10.0.0.0/33").is_err());
        assert!(FetchPolicy::parse_networks("example.com").is_err());
        assert_eq!(FetchPolicy::parse_networks(" 10.0.0.1 ").unwrap().len(), 1);
    }

    #[test]
    fn url_checks() {
        let hosts = FetchPolicy {
            allowed_hosts: FetchPolicy::parse_hosts("catalog.s3.amazonaws.com, *.cdn.example.com").unwrap(),
            ..Default::default()
        };
        let check = |p: &FetchPolicy, u: &str| p.check_url(&Url::parse(u).unwrap()).map_err(|e| e.sqlstate_code());
        assert_eq!(check(&hosts, "https://catalog.s3.amazonaws.com/images/1.jpg"), Ok(()));
        assert_eq!(check(&hosts, "https://CATALOG.s3.amazonaws.com/x"), Ok(()));
        assert_eq!(check(&hosts, "https://a.cdn.example.com/x"), Ok(()));
        assert_eq!(check(&hosts, "https://cdn.example.com/x"), Err("42501"));
        assert_eq!(check(&hosts, "https://evilcdn.example.com/x"), Err("42501"));
        assert_eq!(check(&hosts, "https://other.s3.amazonaws.com/x"), Err("42501"));
        let any = FetchPolicy::default();
        assert_eq!(check(&any, "ftp://example.com/x.jpg"), Err("42501"));
        assert_eq!(check(&any, "http://127.0.0.1/x"), Err("42501"));
        // Decimal, hex and short forms are IPv4 literals to the WHATWG parser, so they are caught too.
        assert_eq!(check(&any, "http://2130706433/x"), Err("42501"));
        assert_eq!(check(&any, "http://0x7f.1/x"), Err("42501"));
        assert_eq!(check(&any, "http://[::ffff:169.254.169.254]/x"), Err("42501"));
        assert_eq!(check(&any, "http://93.184.215.14/x"), Ok(()));
        assert!(FetchPolicy::parse_hosts("bad host!").is_err());
    }

    #[test]
    fn redaction_hides_secrets() {
        let url = Url::parse("https://user:pw@bucket.s3.amazonaws.com/a/b.jpg?X-Amz-Signature=abc#frag").unwrap();
        assert_eq!(redact(&url), "https://bucket.s3.amazonaws.com/a/b.jpg?...");
        assert_eq!(redact_text("not a url?secret=1"), "not a url...");
    }

    /// A tiny HTTP server on 127.0.0.1 answering each connection with `respond(path)`.
    fn serve(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let _ = stream.write_all(&respond(&path));
                });
            }
        });
        port
    }

    fn png() -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn reply(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n").into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn config() -> FetchConfig {
        FetchConfig {
            policy: FetchPolicy { allow_private_addresses: true, ..Default::default() },
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            retries: 2,
            max_redirects: 3,
            max_bytes: 64 * 1024,
            concurrency: 4,
        }
    }

    fn fetch(url: &str, config: &FetchConfig) -> (Result<Download>, u32) {
        let fetcher = Fetcher::get().unwrap();
        let client = fetcher.client(config).unwrap();
        fetcher.runtime.block_on(download(&client, url, config))
    }

    #[test]
    fn downloads_against_a_local_server() {
        let image = png();
        let flaky_hits = std::sync::atomic::AtomicUsize::new(0);
        let port = serve(move |path| {
            let flaky = || flaky_hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match path {
                "/ok.png" => reply("200 OK", &format!("Content-Length: {}\r\n", image.len()), &image),
                "/html" => reply("200 OK", "Content-Type: text/html\r\n", b"<!DOCTYPE html><html>oops</html>"),
                "/missing" => reply("404 Not Found", "Content-Length: 0\r\n", b""),
                "/flaky" if flaky() == 0 => reply("503 Service Unavailable", "Content-Length: 0\r\n", b""),
                "/flaky" => reply("200 OK", "", &image),
                "/huge" => {
                    let mut body = b"\xFF\xD8\xFF\xE0".to_vec();
                    body.resize(200 * 1024, 0);
                    reply("200 OK", "", &body)
                }
                "/declared" => reply("200 OK", "Content-Length: 999999999\r\n", b"\xFF\xD8\xFF"),
                "/loop" => reply("302 Found", "Location: /loop\r\nContent-Length: 0\r\n", b""),
                "/to-ok" => reply("301 Moved", "Location: /ok.png\r\nContent-Length: 0\r\n", b""),
                "/to-metadata" => {
                    reply("302 Found", "Location: http://169.254.169.254/latest/\r\nContent-Length: 0\r\n", b"")
                }
                "/slow" => {
                    std::thread::sleep(Duration::from_secs(3));
                    reply("200 OK", "", &image)
                }
                _ => reply("500 Internal Server Error", "Content-Length: 0\r\n", b""),
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let cfg = config();

        let (ok, attempts) = fetch(&format!("{base}/ok.png"), &cfg);
        assert_eq!(ok.unwrap().bytes, png());
        assert_eq!(attempts, 1);

        let (html, _) = fetch(&format!("{base}/html"), &cfg);
        let html = html.unwrap_err();
        assert_eq!(html.sqlstate_code(), "22P03");
        assert_eq!(html.http_status(), Some(200));
        assert!(html.to_string().contains("HTML") && html.to_string().contains("text/html"), "{html}");

        let (missing, attempts) = fetch(&format!("{base}/missing"), &cfg);
        assert_eq!(missing.unwrap_err().http_status(), Some(404));
        assert_eq!(attempts, 1, "404 is not retried");

        let (flaky, attempts) = fetch(&format!("{base}/flaky"), &cfg);
        assert!(flaky.is_ok() && attempts >= 2, "503 is retried");

        let (always, attempts) = fetch(&format!("{base}/error"), &cfg);
        assert_eq!(always.unwrap_err().sqlstate_code(), "38000");
        assert_eq!(attempts, 3, "one attempt and two retries");

        let (huge, _) = fetch(&format!("{base}/huge"), &cfg);
        assert_eq!(huge.unwrap_err().sqlstate_code(), "54000");
        let (declared, _) = fetch(&format!("{base}/declared"), &cfg);
        assert!(declared.unwrap_err().to_string().contains("declares 999999999 bytes"));

        let (looping, _) = fetch(&format!("{base}/loop"), &cfg);
        assert_eq!(looping.unwrap_err().sqlstate_code(), "54000");
        let (redirected, _) = fetch(&format!("{base}/to-ok"), &cfg);
        assert!(redirected.is_ok());
        let (metadata, attempts) = fetch(&format!("{base}/to-metadata"), &cfg);
        assert_eq!(metadata.unwrap_err().sqlstate_code(), "42501");
        assert_eq!(attempts, 1);

        let quick = FetchConfig { timeout: Duration::from_millis(300), retries: 1, ..cfg.clone() };
        let started = Instant::now();
        let (slow, attempts) = fetch(&format!("{base}/slow"), &quick);
        let slow = slow.unwrap_err();
        assert_eq!(slow.sqlstate_code(), "08006");
        assert!(slow.to_string().contains("timed out"), "{slow}");
        assert_eq!(attempts, 2);
        assert!(started.elapsed() < Duration::from_secs(2));

        // The same server is refused without the private-address switch: by literal, and by name.
        let strict = FetchConfig { policy: FetchPolicy::default(), ..cfg.clone() };
        let (literal, _) = fetch(&format!("{base}/ok.png"), &strict);
        assert_eq!(literal.unwrap_err().sqlstate_code(), "42501");
        let (named, _) = fetch(&format!("http://localhost:{port}/ok.png"), &strict);
        let named = named.unwrap_err();
        assert_eq!(named.sqlstate_code(), "42501", "{named}");
        assert!(named.to_string().contains("localhost resolves to"), "{named}");

        let (refused, attempts) = fetch("http://127.0.0.1:1/x.jpg", &cfg);
        assert_eq!(refused.unwrap_err().sqlstate_code(), "08006");
        assert_eq!(attempts, 3, "connection errors are retried");
        let (bad, _) = fetch("not a url", &cfg);
        assert_eq!(bad.unwrap_err().sqlstate_code(), "22023");
        let (file, _) = fetch("file:///etc/passwd", &cfg);
        assert_eq!(file.unwrap_err().sqlstate_code(), "42501");
    }

    #[test]
    fn batch_results_and_abort() {
        let image = png();
        let port = serve(move |path| match path {
            "/stall" => {
                std::thread::sleep(Duration::from_secs(30));
                Vec::new()
            }
            _ => reply("200 OK", &format!("Content-Length: {}\r\n", image.len()), &image),
        });
        let cfg = FetchConfig { concurrency: 2, timeout: Duration::from_secs(60), ..config() };
        let fetcher = Fetcher::get().unwrap();
        let mut downloads = Downloads::default();
        let jobs: Vec<(u64, String)> = (0..6).map(|i| (i, format!("http://127.0.0.1:{port}/img{i}.png"))).collect();
        let process: Process<usize> = Arc::new(|bytes: &[u8]| Ok(bytes.len()));
        fetcher.start(&mut downloads, jobs, &cfg, process.clone()).unwrap();
        let mut seen = Vec::new();
        while let Some(done) = downloads.next(Duration::from_secs(5)) {
            assert_eq!(*done.result.as_ref().unwrap(), png().len());
            seen.push(done.id);
        }
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());

        // A stalled download is aborted when its Downloads is dropped (what query cancel does).
        fetcher.start(&mut downloads, vec![(9, format!("http://127.0.0.1:{port}/stall"))], &cfg, process).unwrap();
        assert!(downloads.next(Duration::from_millis(300)).is_none());
        assert_eq!(downloads.outstanding(), 1);
        let handle_count = downloads.handles.len();
        drop(downloads);
        assert_eq!(handle_count, 1);
    }
}
