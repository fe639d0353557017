//! Broker URLs: `redis://`, `rediss://`, `amqp://`, `amqps://` (and `pyamqp://`), `memory://`.
//!
//! The grammar follows kombu's: `redis://[[username]:password@]host[:port][/db][?query]`.
//! Port defaults to 6379, the database to 0, the host to `localhost`.
//! `amqp://[user[:password]@]host[:port][/vhost]`: user and password default to `guest`,
//! the port to 5672 (5671 for `amqps://`), and the virtual host to `/`, which an empty path,
//! `//` and `/%2f` all name, as in kombu. The password is
//! percent-decoded (kombu unquotes it). Query parameters are accepted and ignored: kombu's
//! transport options are not taken from the URL by Celery either. Parsing never panics;
//! every malformed part is reported as a [`UrlError`].

use std::fmt;

/// Why a broker URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL was empty.
    #[error("the broker URL is empty")]
    Empty,
    /// The URL has no `scheme://` part.
    #[error(
        "the broker URL {0:?} has no scheme (expected redis://, rediss://, amqp://, amqps:// or memory://)"
    )]
    MissingScheme(String),
    /// A scheme Celeriac does not know.
    #[error(
        "unsupported broker scheme {0:?} (expected redis://, rediss://, amqp://, amqps:// or memory://)"
    )]
    UnsupportedScheme(String),
    /// The virtual host of an AMQP URL is not valid (it must fit in 255 bytes).
    #[error("invalid AMQP virtual host {0:?} in the broker URL")]
    InvalidVhost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?} in the broker URL")]
    InvalidPort(String),
    /// The database path is not a non-negative integer.
    #[error("invalid Redis database {0:?} in the broker URL (expected /<number>)")]
    InvalidDb(String),
    /// The host part is malformed (e.g. an unclosed IPv6 bracket).
    #[error("invalid host {0:?} in the broker URL")]
    InvalidHost(String),
    /// A `%XX` escape is not valid, or decodes to invalid UTF-8.
    #[error("invalid percent-encoding in the broker URL credentials")]
    InvalidPercentEncoding,
}

/// A parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// kombu's Redis transport.
    Redis(RedisUrl),
    /// RabbitMQ (AMQP 0-9-1).
    Amqp(AmqpUrl),
    /// The in-process broker; brokers with the same name share their queues.
    Memory {
        /// Everything after `memory://` (may be empty).
        name: String,
    },
}

/// Where a Redis broker lives.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number (the URL path).
    pub db: i64,
    /// ACL user name, if given.
    pub username: Option<String>,
    /// Password, if given (already percent-decoded).
    pub password: Option<String>,
}

/// Where an AMQP broker lives.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    /// `amqps://`: TLS.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name (`guest` when the URL has none).
    pub username: String,
    /// Password, percent-decoded (`guest` when the URL has none).
    pub password: String,
    /// Virtual host, percent-decoded (`/` when the URL has none).
    pub vhost: String,
}

impl AmqpUrl {
    /// The URL with the password replaced by `**`, as Celery's banner shows it.
    pub fn masked(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        // Celery prints the default vhost as `//`.
        format!(
            "{scheme}://{}:**@{host}:{}/{}",
            self.username, self.port, self.vhost
        )
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

// Debug must not print the password: URLs end up in logs.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl RedisUrl {
    /// The URL with the password replaced by `**`, as Celery's banner shows it.
    pub fn masked(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let creds = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:**@"),
            (None, Some(_)) => ":**@".to_string(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{creds}{host}:{}/{}", self.port, self.db)
    }
}

impl BrokerUrl {
    /// Parse a broker URL. Never panics.
    ///
    /// ```
    /// use celeriac::broker::url::BrokerUrl;
    /// let url = BrokerUrl::parse("redis://:s%40cret@10.0.0.1:6380/3").unwrap();
    /// assert_eq!(url.masked(), "redis://:**@10.0.0.1:6380/3");
    /// ```
    pub fn parse(url: &str) -> Result<BrokerUrl, UrlError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(UrlError::MissingScheme(url.to_string()));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "redis" => parse_redis(rest, false).map(BrokerUrl::Redis),
            "rediss" => parse_redis(rest, true).map(BrokerUrl::Redis),
            "memory" => Ok(BrokerUrl::Memory {
                name: rest.to_string(),
            }),
            "amqp" | "pyamqp" => parse_amqp(rest, false).map(BrokerUrl::Amqp),
            "amqps" => parse_amqp(rest, true).map(BrokerUrl::Amqp),
            other => Err(UrlError::UnsupportedScheme(other.to_string())),
        }
    }

    /// The URL for banners and logs, password masked.
    pub fn masked(&self) -> String {
        match self {
            BrokerUrl::Redis(r) => r.masked(),
            BrokerUrl::Amqp(a) => a.masked(),
            BrokerUrl::Memory { name } => format!("memory://{name}"),
        }
    }
}

/// `(userinfo, host[:port], path)` of what follows `scheme://`; query and fragment dropped
/// (options are not read from the URL).
fn split_authority(rest: &str) -> (Option<&str>, &str, &str) {
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    // The password may contain '@' when not escaped; the last '@' ends the userinfo.
    match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..], path),
        None => (None, authority, path),
    }
}

fn parse_amqp(rest: &str, tls: bool) -> Result<AmqpUrl, UrlError> {
    let (userinfo, hostport, path) = split_authority(rest);
    let (mut username, mut password) = ("guest".to_string(), "guest".to_string());
    if let Some(ui) = userinfo {
        let (user, pass) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if !user.is_empty() {
            username = percent_decode(user)?;
        }
        if let Some(p) = pass.filter(|p| !p.is_empty()) {
            password = percent_decode(p)?;
        }
    }
    let (host, port) = split_host_port(hostport, if tls { 5671 } else { 5672 })?;
    // kombu: an empty path (and `//`, which leaves `/`) is the default vhost `/`.
    let vhost = match percent_decode(path)? {
        v if v.is_empty() => "/".to_string(),
        v => v,
    };
    if vhost.len() > 255 {
        return Err(UrlError::InvalidVhost(vhost));
    }
    Ok(AmqpUrl {
        tls,
        host,
        port,
        username,
        password,
        vhost,
    })
}

fn parse_redis(rest: &str, tls: bool) -> Result<RedisUrl, UrlError> {
    let (userinfo, hostport, path) = split_authority(rest);
    let (username, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (user, pass) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            let user = if user.is_empty() {
                None
            } else {
                Some(percent_decode(user)?)
            };
            let pass = match pass {
                Some(p) if !p.is_empty() => Some(percent_decode(p)?),
                _ => None,
            };
            (user, pass)
        }
    };
    let (host, port) = split_host_port(hostport, 6379)?;
    let db_text = path.trim_end_matches('/');
    let db = if db_text.is_empty() {
        0
    } else {
        db_text
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| UrlError::InvalidDb(path.to_string()))?
    };
    Ok(RedisUrl {
        tls,
        host,
        port,
        db,
        username,
        password,
    })
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            return Err(UrlError::InvalidHost(hostport.to_string()));
        };
        let after = &inner[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::InvalidHost(hostport.to_string())),
        };
        (inner[..end].to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError::InvalidPort(p.to_string()))?,
    };
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    Ok((host, port))
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(UrlError::InvalidPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::InvalidPercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::InvalidPercentEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::InvalidPercentEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(url: &str) -> RedisUrl {
        match BrokerUrl::parse(url) {
            Ok(BrokerUrl::Redis(r)) => r,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn redis_defaults() {
        let r = redis("redis://");
        assert_eq!(
            (r.host.as_str(), r.port, r.db, r.tls),
            ("localhost", 6379, 0, false)
        );
        let r = redis("redis://127.0.0.1:6379/0");
        assert_eq!((r.host.as_str(), r.port, r.db), ("127.0.0.1", 6379, 0));
        let r = redis("redis://example.com/7/");
        assert_eq!((r.host.as_str(), r.port, r.db), ("example.com", 6379, 7));
    }

    #[test]
    fn credentials_are_decoded_and_masked() {
        let r = redis("rediss://bob:p%40ss:w@h:1/2?ssl_cert_reqs=none");
        assert_eq!(r.username.as_deref(), Some("bob"));
        assert_eq!(r.password.as_deref(), Some("p@ss:w"));
        assert!(r.tls);
        assert_eq!(r.masked(), "rediss://bob:**@h:1/2");
        assert!(!format!("{r:?}").contains("p@ss"));
        let r = redis("redis://:secret@h/0");
        assert_eq!(
            (r.username.clone(), r.password.as_deref()),
            (None, Some("secret"))
        );
        assert_eq!(r.masked(), "redis://:**@h:6379/0");
    }

    #[test]
    fn ipv6_hosts() {
        let r = redis("redis://[::1]:7000/1");
        assert_eq!((r.host.as_str(), r.port, r.db), ("::1", 7000, 1));
        assert_eq!(r.masked(), "redis://[::1]:7000/1");
        assert_eq!(
            BrokerUrl::parse("redis://[::1/0"),
            Err(UrlError::InvalidHost("[::1".into()))
        );
    }

    fn amqp(url: &str) -> AmqpUrl {
        match BrokerUrl::parse(url) {
            Ok(BrokerUrl::Amqp(a)) => a,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn amqp_urls_follow_kombu() {
        // Checked against kombu 5.7's Connection(url): hostname, port, userid, password,
        // virtual_host (with the transport's defaults filled in).
        let a = amqp("amqp://");
        assert_eq!(
            (
                a.host.as_str(),
                a.port,
                a.username.as_str(),
                a.password.as_str(),
                a.vhost.as_str(),
                a.tls
            ),
            ("localhost", 5672, "guest", "guest", "/", false)
        );
        for url in ["amqp://h/", "amqp://h//", "amqp://h/%2f", "pyamqp://h"] {
            assert_eq!(amqp(url).vhost, "/", "{url}");
        }
        let a = amqp("amqp://u:p%40x@h:1234/foo?heartbeat=3");
        assert_eq!(
            (
                a.host.as_str(),
                a.port,
                a.username.as_str(),
                a.password.as_str(),
                a.vhost.as_str()
            ),
            ("h", 1234, "u", "p@x", "foo")
        );
        assert_eq!(a.masked(), "amqp://u:**@h:1234/foo");
        assert!(!format!("{a:?}").contains("p@x"));
        let a = amqp("amqps://h");
        assert_eq!((a.port, a.tls), (5671, true));
        assert_eq!(amqp("amqp://u@[::1]/v").host, "::1");
        assert_eq!(amqp("amqp://u@[::1]/v").password, "guest");
    }

    #[test]
    fn memory_urls() {
        assert_eq!(
            BrokerUrl::parse("memory://").unwrap(),
            BrokerUrl::Memory {
                name: String::new()
            }
        );
        assert_eq!(
            BrokerUrl::parse("memory://x").unwrap(),
            BrokerUrl::Memory { name: "x".into() }
        );
    }

    #[test]
    fn errors_never_panic() {
        assert_eq!(BrokerUrl::parse(""), Err(UrlError::Empty));
        assert!(matches!(
            BrokerUrl::parse("localhost"),
            Err(UrlError::MissingScheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("sqs://x"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("amqp://h:0/"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("amqp://u:%zz@h/"),
            Err(UrlError::InvalidPercentEncoding)
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://h:99999/0"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://h:abc/0"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://h/x"),
            Err(UrlError::InvalidDb(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://h/-1"),
            Err(UrlError::InvalidDb(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://:%zz@h/0"),
            Err(UrlError::InvalidPercentEncoding)
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://:%4@h/0"),
            Err(UrlError::InvalidPercentEncoding)
        ));
        assert!(matches!(
            BrokerUrl::parse("redis://:%ff@h/0"),
            Err(UrlError::InvalidPercentEncoding)
        ));
    }
}
