//! What fleet's integration tests against a real etcd share: a client with
//! short timeouts (1 s to connect, 5 s a request), so that a test that
//! goes wrong fails soon.

use std::time::Duration;

use cairn_etcd::{Client, Config};

/// A client of the etcd at `url`.
pub fn client(url: &str) -> Client {
    Client::with_config(
        [url],
        Config {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..Config::default()
        },
    )
    .unwrap()
}
