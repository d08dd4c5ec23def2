//! TLS to the servers: `ssl_mode` required, verify_ca and verify_identity
//! against a real MariaDB server with its own certificate authority, and an
//! account that the server only admits over TLS.

use std::path::Path;
use std::process::Command;

use blobcheck::config::Config;
use blobcheck::db::Databases;
use blobcheck::sandbox::{Sandbox, SandboxOptions};
use mysql_async::prelude::Queryable;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a second CA
/// that signed nothing.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=blobcheck test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

fn config(sandbox: &Sandbox, tls: &str) -> Result<Config, blobcheck::error::Error> {
    config_at(&sandbox.url_for("tlsuser", "tls-pw"), tls)
}

fn config_at(url: &str, tls: &str) -> Result<Config, blobcheck::error::Error> {
    let text = format!(
        r#"
[servers.global]
url = "{url}"
{tls}
[blobs]
server = "global"
table = "tlsdb.Blobs"
id = "ID"
count = "Refs"
[[references]]
server = "global"
table = "tlsdb.Refs"
column = "BlobID"
"#
    );
    Config::parse(&text, Path::new("tls.toml"))
}

async fn cipher(config: &Config) -> Result<String, String> {
    let databases = Databases::connect(config, 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = databases.conn(0).await.map_err(|e| e.to_string())?;
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .map_err(|e| e.to_string())?;
    drop(conn);
    databases.disconnect().await;
    Ok(row.map(|(_, cipher)| cipher).unwrap_or_default())
}

/// A server with the certificates of `certificates(dir)`, a small blob
/// table, and an account it only admits over TLS.
async fn tls_server(dir: &Path) -> Sandbox {
    let path = |name: &str| dir.join(name).display().to_string();
    let options = SandboxOptions::new("tls")
        .arg(format!("--ssl-ca={}", path("ca.pem")))
        .arg(format!("--ssl-cert={}", path("server.pem")))
        .arg(format!("--ssl-key={}", path("server.key")));
    tokio::task::spawn_blocking(move || {
        let sandbox = Sandbox::start(options).unwrap();
        sandbox
            .run_sql(
                "CREATE DATABASE tlsdb; \
                 CREATE TABLE tlsdb.Blobs (ID bigint unsigned PRIMARY KEY, Refs bigint unsigned NOT NULL); \
                 CREATE TABLE tlsdb.Refs (ID bigint unsigned PRIMARY KEY, BlobID bigint unsigned, KEY BlobID (BlobID)); \
                 INSERT INTO tlsdb.Blobs VALUES (1, 1), (2, 2); INSERT INTO tlsdb.Refs VALUES (10, 1), (11, 2); \
                 CREATE USER 'tlsuser'@'%' IDENTIFIED BY 'tls-pw' REQUIRE SSL; \
                 GRANT SELECT ON tlsdb.* TO 'tlsuser'@'%';",
            )
            .unwrap();
        sandbox
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_a_server_that_requires_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let sandbox = tls_server(dir.path()).await;

    // Without TLS the server turns the account away.
    let plain = cipher(&config(&sandbox, "").unwrap()).await.unwrap_err();
    assert!(plain.contains("Access denied"), "{plain}");

    // Encrypted, certificate unchecked.
    let required = cipher(&config(&sandbox, "ssl_mode = \"required\"").unwrap())
        .await
        .unwrap();
    assert!(!required.is_empty(), "a TLS cipher is in use");

    // The right CA: verify_ca and verify_identity (the certificate names
    // 127.0.0.1) both connect over TLS.
    for mode in ["verify_ca", "verify_identity"] {
        let tls = format!("ssl_mode = \"{mode}\"\nssl_ca = \"{}\"", path("ca.pem"));
        let cipher = cipher(&config(&sandbox, &tls).unwrap()).await.unwrap();
        assert!(!cipher.is_empty(), "{mode}");
    }

    // A CA that did not sign the server's certificate: refused, in one line.
    let tls = format!(
        "ssl_mode = \"verify_ca\"\nssl_ca = \"{}\"",
        path("other.pem")
    );
    let wrong = cipher(&config(&sandbox, &tls).unwrap()).await.unwrap_err();
    assert!(wrong.contains("cannot connect"), "{wrong}");
    assert!(
        !wrong.contains('\n') && !wrong.contains("tls-pw"),
        "{wrong}"
    );

    // A whole check over TLS works as the SELECT-only account.
    let tls = format!(
        "ssl_mode = \"verify_identity\"\nssl_ca = \"{}\"",
        path("ca.pem")
    );
    let config = config(&sandbox, &tls).unwrap();
    let out: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
    let reporter =
        blobcheck::report::Reporter::new(blobcheck::report::Format::Json, out, vec!["refs".into()]);
    let options = blobcheck::check::CheckOptions::new(blobcheck::scan::ScanOptions::fixed(10, 1));
    let summary = blobcheck::check::run(&config, &options, reporter)
        .await
        .unwrap();
    assert_eq!(
        summary.findings.total, 1,
        "blob 2 claims two references and has one"
    );
    tokio::task::spawn_blocking(move || drop(sandbox))
        .await
        .unwrap();
}

/// `verify_identity` checks the name: the certificate names 127.0.0.1 only,
/// so the server reached as `localhost` is refused, in one line that says
/// why, while the same server, CA and mode connect through 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_identity_refuses_a_certificate_for_another_name() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let ca = dir.path().join("ca.pem").display().to_string();
    let sandbox = tls_server(dir.path()).await;
    let url = sandbox.url_for("tlsuser", "tls-pw");
    let by_name = url.replace("@127.0.0.1:", "@localhost:");
    assert_ne!(url, by_name);
    let mode = |mode: &str| format!("ssl_mode = \"{mode}\"\nssl_ca = \"{ca}\"");

    let cipher_ip = cipher(&config_at(&url, &mode("verify_identity")).unwrap())
        .await
        .unwrap();
    assert!(!cipher_ip.is_empty(), "verify_identity through 127.0.0.1");

    let wrong = cipher(&config_at(&by_name, &mode("verify_identity")).unwrap())
        .await
        .unwrap_err();
    eprintln!("verify_identity through localhost: {wrong}");
    assert!(
        wrong.contains("cannot connect") && wrong.contains("not valid for name \"localhost\""),
        "{wrong}"
    );
    assert!(
        !wrong.contains('\n') && !wrong.contains("tls-pw"),
        "{wrong}"
    );
    tokio::task::spawn_blocking(move || drop(sandbox))
        .await
        .unwrap();
}

#[test]
fn tls_settings_are_validated() {
    let base = "[servers.g]\nurl = \"mysql://u@127.0.0.1:1\"\n{tls}\n[blobs]\nserver = \"g\"\ntable = \"d.t\"\nid = \"i\"\ncount = \"c\"\n[[references]]\nserver = \"g\"\ntable = \"d.r\"\ncolumn = \"b\"\n";
    let parse = |tls: &str| Config::parse(&base.replace("{tls}", tls), Path::new("t.toml"));
    let error = parse("ssl_mode = \"sometimes\"").unwrap_err().to_string();
    assert!(
        error.contains("ssl_mode `sometimes` is not one of"),
        "{error}"
    );
    let error = parse("ssl_mode = \"verify_ca\"\nssl_ca = \"/nonexistent/ca.pem\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("no such file"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let error = parse(&format!(
        "ssl_mode = \"required\"\nssl_ca = \"{}\"",
        ca.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("does not verify"), "{error}");
    let config = parse(&format!("ssl_ca = \"{}\"", ca.display())).unwrap();
    assert_eq!(
        config.servers[0].tls,
        blobcheck::config::Tls::VerifyIdentity(Some(ca))
    );
}
