//! The gateway's command line: bad flags and values exit with status 2 and
//! a message that names the flag, before anything listens.

use std::process::Command;

mod support;

use support::gateway_binary as gateway;

/// Runs the gateway with `args` on ports nothing else uses; it must fail.
fn rejected(args: &[&str]) -> (i32, String) {
    let output = Command::new(gateway())
        .args(["--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:1"])
        .args(args)
        .env_remove("STICKY_SECRET")
        .output()
        .expect("the gateway runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let secret =
        std::env::temp_dir().join(format!("gateway-cli-short-secret-{}", std::process::id()));
    std::fs::write(&secret, "short\n").unwrap();
    let secret = secret.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 34] = [
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--listen", "nowhere"], "--listen"),
        (&["--backend", "b1"], "--backend"),
        (&["--backend", "b1=ftp://x:21"], "--backend"),
        (&["--backend", "b1=http://user:pw@127.0.0.1:9"], "--backend"),
        // "Forever" as the largest number: a year at most.
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--client-timeout",
                "9223372036854775807",
            ],
            "--client-timeout",
        ),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--max-age",
                "18446744073709551615",
            ],
            "--max-age",
        ),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--backend",
                "b1=http://127.0.0.1:10",
            ],
            "--backend",
        ),
        (
            &["--backend", "b1=http://127.0.0.1:9", "--weight", "b1=300"],
            "--weight",
        ),
        (
            &["--backend", "b1=http://127.0.0.1:9", "--weight", "b9=3"],
            "--weight",
        ),
        (
            &["--backend", "b1=http://127.0.0.1:9", "--group", "b9=v2"],
            "--group",
        ),
        (&["--affinity", "header"], "--affinity"),
        (&["--affinity", "carrier-pigeon"], "--affinity"),
        (&["--affinity", "query:a b"], "--affinity"),
        (&["--failover", "sometimes"], "--failover"),
        (&["--cookie-same-site", "sometimes"], "--cookie-same-site"),
        (&["--cookie-domain", "exa mple.com"], "--cookie-domain"),
        (&["--cookie-domain", "example..com"], "--cookie-domain"),
        (&["--cookie-domain", ""], "--cookie-domain"),
        (&["--cookie-domain=-example.com"], "--cookie-domain"),
        (&["--cookie-domain", "example-.com"], "--cookie-domain"),
        (&["--cookie-path", "app"], "--cookie-path"),
        (&["--cookie-path", "/app;Secure"], "--cookie-path"),
        (&["--health-check", "healthz"], "--health-check"),
        (&["--health-check", "/healthz#ready"], "--health-check"),
        (
            &["--health-check", "/healthz", "--health-interval", "0"],
            "--health-interval",
        ),
        (
            &["--health-check", "/healthz", "--health-timeout", "soon"],
            "--health-timeout",
        ),
        (
            &["--health-check", "/healthz", "--health-fall", "0"],
            "--health-fall",
        ),
        // Check settings without checks are a mistake, not ignored.
        (&["--health-rise", "3"], "--health-check"),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--client-timeout",
                "0",
            ],
            "--client-timeout",
        ),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--backend-timeout",
                "0",
            ],
            "--backend-timeout",
        ),
        (&["--backend-timeout", "soon"], "--backend-timeout"),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--backend-idle-timeout",
                "0",
            ],
            "--backend-idle-timeout",
        ),
        (
            &[
                "--backend",
                "b1=http://127.0.0.1:9",
                "--secret-file",
                &secret,
            ],
            "--secret-file",
        ),
    ];
    for (args, flag) in cases {
        let (code, stderr) = rejected(args);
        assert_eq!(code, 2, "{args:?} should exit 2; stderr: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?}: the message should name {flag}: {stderr}"
        );
    }
}

#[test]
fn help_documents_every_flag() {
    let output = Command::new(gateway())
        .arg("--help")
        .output()
        .expect("the gateway runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--backend",
        "--weight",
        "--group",
        "--group-weight",
        "--affinity",
        "--cookie-name",
        "--strip-cookie",
        "--cookie-secure",
        "--cookie-same-site",
        "--cookie-domain",
        "--cookie-path",
        "--max-age",
        "--idle-timeout",
        "--secret-file",
        "--failover",
        "--trusted-proxies",
        "--admin-listen",
        "--preserve-host",
        "--threads",
        "--pin-workers",
        "--access-log",
        "--client-timeout",
        "--backend-timeout",
        "--backend-idle-timeout",
        "--health-check",
        "--health-interval",
        "--health-timeout",
        "--health-rise",
        "--health-fall",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}
