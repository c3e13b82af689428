//! Running one test inside its own network namespace, so that it can cut
//! links with firewall rules without touching the host's network.
//!
//! The test calls [`enter`] first. Outside the namespace, `enter` runs the
//! same test binary again, with only that test, under
//! `unshare --net --map-root-user`, waits for it and reports
//! [`Sandbox::Ran`]; the test then returns (the child's result is its
//! result). Inside, `enter` brings `lo` up and reports [`Sandbox::Inside`]:
//! the test does its work there. Where user or network namespaces are not
//! allowed, or `nft` is missing, it reports [`Sandbox::Skipped`] with the
//! reason, unless `KV_FAULTS_REQUIRE=1` asks for a failure instead.
//!
//! ```no_run
//! use kv_testkit::netns::{enter, Sandbox};
//! match enter("my_test", &[]) {
//!     Sandbox::Inside => { /* the test body: nodes on 127.0.0.2, ... */ }
//!     Sandbox::Ran => {}
//!     Sandbox::Skipped(why) => println!("skipped: {why}"),
//! }
//! ```

use std::process::{Command, Stdio};

/// Set in the environment of the re-executed test.
const INSIDE: &str = "KV_NETNS_INSIDE";

/// Where a test runs, as decided by [`enter`].
#[derive(Debug)]
pub enum Sandbox {
    /// This process is inside the namespace: run the test body.
    Inside,
    /// The test ran (and passed) in a child process inside a namespace.
    Ran,
    /// Namespaces or `nft` are not available here; the reason.
    Skipped(String),
}

/// Runs test `name` of the current test binary inside a new user and
/// network namespace, with `env` added to its environment (see the module
/// documentation). Panics when the child test fails.
pub fn enter(name: &str, env: &[(&str, &str)]) -> Sandbox {
    if std::env::var_os(INSIDE).is_some() {
        lo_up();
        return Sandbox::Inside;
    }
    if let Some(why) = unavailable() {
        let required = std::env::var("KV_FAULTS_REQUIRE").is_ok_and(|v| v == "1");
        assert!(!required, "KV_FAULTS_REQUIRE=1 but {why}");
        println!("SKIPPED {name}: {why}");
        return Sandbox::Skipped(why);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("unshare")
        .args(["--net", "--map-root-user"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .envs(env.iter().copied())
        .status()
        .expect("run unshare");
    assert!(
        status.success(),
        "{name} failed inside its network namespace: {status}"
    );
    Sandbox::Ran
}

/// Why a namespace with nftables cannot be had here, if it cannot.
fn unavailable() -> Option<String> {
    let probe = Command::new("unshare")
        .args(["--net", "--map-root-user", crate::firewall::nft_program()])
        .args(["list", "ruleset"])
        .stdout(Stdio::null())
        .output();
    match probe {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`unshare --net --map-root-user nft list ruleset` failed ({}): {} \
             (user/network namespaces not allowed, or nftables not installed)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Sets the loopback interface of this network namespace up (a new
/// namespace starts with it down).
fn lo_up() {
    // SAFETY: a plain socket used only for the two interface ioctls below,
    // on an `ifreq` that lives on this stack frame; closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let got = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        assert!(
            got == 0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req);
        assert!(
            set == 0,
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}
