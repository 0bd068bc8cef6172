//! Where a tenant's data lives when it is not on the default PostgreSQL server.

/// `host` or `host:port` of another PostgreSQL server, one of `TENANCY_DATABASE_SERVERS`.
/// Never credentials: the application role and the owner log in there with the user and
/// password of their own URLs, so the registry holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerAddress(String);

impl ServerAddress {
    pub fn parse(input: &str) -> Result<Self, String> {
        let address = input.to_ascii_lowercase();
        let bad = || {
            format!(
                "'{input}' is not a server address: expected host or host:port, e.g. db2.internal:5432"
            )
        };
        let (host, port) = match address.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(bad)?;
                host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
                };
                (host, port)
            }
            None => match address.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address.as_str(), None),
            },
        };
        if let Some(port) = port {
            port.parse::<std::num::NonZeroU16>().map_err(|_| bad())?;
        }
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !address.starts_with('[') && (host.len() > 253 || !host.split('.').all(label_ok)) {
            return Err(bad());
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServerAddress {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<ServerAddress> for String {
    fn from(server: ServerAddress) -> String {
        server.0
    }
}
