//! `Server::bind` raises the soft limit on open descriptors to the hard limit (issue 15, item 3). Its own
//! binary: it lowers the process's limit first.

use std::sync::Arc;

use cairn_tftp::{Config, DirHandler, Server};

fn getrlimit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

#[test]
fn bind_raises_the_descriptor_soft_limit_to_the_hard_limit() {
    let mut lim = getrlimit();
    let hard = lim.rlim_max;
    assert!(hard > 256, "hard limit {hard} leaves nothing to raise");
    lim.rlim_cur = 256;
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    assert_eq!(getrlimit().rlim_cur, 256);

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
    let raised = getrlimit().rlim_cur;
    if hard == libc::RLIM_INFINITY {
        assert!(raised > 256, "soft limit left at {raised}");
    } else {
        assert_eq!(raised, hard);
    }
    drop(server);
}
