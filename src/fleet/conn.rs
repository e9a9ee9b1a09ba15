//! Where the fleet lives and how to reach it: the URL forms, one Redis or a Redis
//! Cluster, and the two connections the fleet thread holds (commands, and pub/sub).
//! Used only on the fleet's own thread; decides nothing about verdicts.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, ConnectionLike, ErrorKind, RedisError, Value};

use super::config::FleetError;

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 512;

/// A parsed fleet URL: one server, or a cluster (its seed nodes).
pub(crate) enum Target {
    Single(Client),
    Cluster {
        client: Box<ClusterClient>,
        /// A plain client of the first seed node: pub/sub messages reach every node of
        /// a cluster, so one subscription on any node hears every write.
        subscriber: Client,
    },
}

/// The command connection of either kind.
pub(crate) enum Commands {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Commands {
    pub(crate) fn con(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Commands::Single(c) => c,
            Commands::Cluster(c) => &mut **c,
        }
    }

    /// Every key under `prefix`, with `SCAN … MATCH prefix*` (on each primary of a
    /// cluster in turn).
    pub(crate) fn scan_prefix(&mut self, prefix: &str) -> Result<Vec<String>, RedisError> {
        let pattern = format!("{prefix}*");
        match self {
            Commands::Single(c) => scan_node(&pattern, |cmd| cmd.query(c)),
            Commands::Cluster(c) => {
                let mut keys = Vec::new();
                for (host, port) in cluster_primaries(c)? {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    keys.extend(scan_node(&pattern, |cmd| {
                        redis::from_redis_value(c.route_command(cmd, route.clone())?)
                            .map_err(RedisError::from)
                    })?);
                }
                Ok(keys)
            }
        }
    }
}

/// One node's `SCAN` loop; `query` sends a command to that node.
fn scan_node(
    pattern: &str,
    mut query: impl FnMut(&redis::Cmd) -> Result<(u64, Vec<String>), RedisError>,
) -> Result<Vec<String>, RedisError> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, batch) = query(&cmd)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The primaries of a cluster, from `CLUSTER SLOTS` (each slot range's first node).
fn cluster_primaries(
    c: &mut redis::cluster::ClusterConnection,
) -> Result<Vec<(String, u16)>, RedisError> {
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(c)?;
    let mut primaries = Vec::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let Some(Value::Array(node)) = fields.get(2) else {
                continue;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = node.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if !primaries.contains(&(host.clone(), port)) {
                primaries.push((host, port));
            }
        }
    }
    Ok(primaries)
}

/// The scheme that asks for the cluster client: `redis+cluster://`.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Parses a fleet URL (see the module docs for the forms).
pub(crate) fn parse(
    url: &str,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<Target, FleetError> {
    let bad = |detail: String| FleetError::BadUrl {
        url: redact(url),
        detail,
    };
    let nodes: Vec<String> = if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        rest.split(',').map(|n| format!("redis://{n}")).collect()
    } else if url.contains(',') {
        url.split(',').map(str::to_owned).collect()
    } else {
        let client = Client::open(url).map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Single(client));
    };
    if nodes
        .iter()
        .any(|n| n.trim().is_empty() || n.ends_with("://"))
    {
        return Err(bad("a node of the cluster list is empty".to_owned()));
    }
    let subscriber = Client::open(nodes[0].as_str()).map_err(|e| bad(e.to_string()))?;
    for node in &nodes[1..] {
        Client::open(node.as_str()).map_err(|e| bad(e.to_string()))?;
    }
    let client = ClusterClientBuilder::new(nodes)
        .connection_timeout(connect_timeout)
        .response_timeout(command_timeout)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Target::Cluster {
        client: Box::new(client),
        subscriber,
    })
}

impl Target {
    /// Opens the command and pub/sub connections, with their timeouts, and checks that
    /// the server answers (`PING`: an auth failure shows here).
    pub(crate) fn open(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<(Commands, redis::Connection), RedisError> {
        let (mut commands, subscriber) = match self {
            Target::Single(client) => {
                let c = client.get_connection_with_timeout(connect_timeout)?;
                c.set_read_timeout(Some(command_timeout))?;
                c.set_write_timeout(Some(command_timeout))?;
                (Commands::Single(c), client)
            }
            Target::Cluster { client, subscriber } => {
                let c = client.get_connection()?;
                c.set_read_timeout(Some(command_timeout))?;
                c.set_write_timeout(Some(command_timeout))?;
                (Commands::Cluster(Box::new(c)), subscriber)
            }
        };
        redis::cmd("PING").query::<()>(commands.con())?;
        let sub = subscriber.get_connection_with_timeout(connect_timeout)?;
        sub.set_write_timeout(Some(command_timeout))?;
        Ok((commands, sub))
    }
}

/// True when `e` says the server refused our credentials (or wants some).
pub(crate) fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        || e.to_string().contains("NOAUTH")
        || e.to_string().contains("WRONGPASS")
}

/// `url` with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let start = part.find("://").map_or(0, |i| i + 3);
            match part.rfind('@') {
                Some(at) if at > start && part[start..at].contains(':') => {
                    let user = part[start..at].split(':').next().unwrap_or("");
                    format!("{}{user}:***{}", &part[..start], &part[at..])
                }
                _ => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(
            redact("redis://u:pw@h:1,redis://u:x@g:2"),
            "redis://u:***@h:1,redis://u:***@g:2"
        );
        assert_eq!(
            redact("redis+cluster://u:p@a:1,u:p@b:2"),
            "redis+cluster://u:***@a:1,u:***@b:2"
        );
    }

    #[test]
    fn url_forms() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            parse("redis://127.0.0.1:1/0", t, t),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            parse("redis+cluster://127.0.0.1:1,127.0.0.1:2", t, t),
            Ok(Target::Cluster { .. })
        ));
        assert!(matches!(
            parse("redis://127.0.0.1:1,redis://127.0.0.1:2", t, t),
            Ok(Target::Cluster { .. })
        ));
        for bad in [
            "",
            "nonsense",
            "http://x",
            "redis+cluster://",
            "redis://a:1,",
        ] {
            assert!(
                matches!(parse(bad, t, t), Err(FleetError::BadUrl { .. })),
                "{bad:?}"
            );
        }
    }
}
