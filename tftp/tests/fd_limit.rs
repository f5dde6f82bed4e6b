//! `Server::bind` raises the soft limit on open descriptors to the hard limit (issue 15, item 3). Its own
//! binary: it lowers the process's limit first.

use std::sync::Arc;

use cairn_tftp::{Config, DirHandler, Server};
use rustix::process::{getrlimit, setrlimit, Resource};

#[test]
fn bind_raises_the_descriptor_soft_limit_to_the_hard_limit() {
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum;
    assert!(
        hard.is_none_or(|h| h > 256),
        "hard limit {hard:?} leaves nothing to raise"
    );
    lim.current = Some(256);
    setrlimit(Resource::Nofile, lim).unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, Some(256));

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handler = Arc::new(DirHandler::new(dir.path()).unwrap());
    let server = rt
        .block_on(Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            Config::default(),
        ))
        .unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, hard);
    drop(server);
}
