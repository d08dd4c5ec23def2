//! Integration tests for `blobcheck::sandbox`: real MariaDB servers, no mocks.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobcheck::sandbox::{Sandbox, SandboxOptions, cleanup_stale_dirs, pid_alive};

/// When set, `child_helper` starts a sandbox, prints its details and sleeps until killed.
const CHILD_ENV: &str = "BLOBCHECK_SANDBOX_TEST_CHILD";

fn start(name: &str) -> Sandbox {
    let t = Instant::now();
    let sb = Sandbox::start(SandboxOptions::new(name))
        .unwrap_or_else(|e| panic!("starting sandbox {name}: {e}"));
    eprintln!(
        "sandbox {name} started on port {} in {:?}",
        sb.port(),
        t.elapsed()
    );
    sb
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

#[test]
fn two_sandboxes_at_once() {
    let a = start("two_a");
    let b = start("two_b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.datadir(), b.datadir());
    assert_ne!(a.socket(), b.socket());
    assert!(a.socket().as_os_str().len() < 100);
    for sb in [&a, &b] {
        let rows = sb.query("SELECT VERSION()").unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        // The sandbox runs MariaDB, and one the check supports (10.3+).
        let version = &rows[0][0];
        assert!(version.contains("-MariaDB"), "{version}");
        let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>());
        let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
            panic!("VERSION() {version:?} does not start with major.minor");
        };
        assert!((major, minor) >= (10, 3), "{version}");
        assert!(port_open(sb.port()));
    }
    assert_eq!(a.root_url(), format!("mysql://root@127.0.0.1:{}", a.port()));
    assert_eq!(
        a.url_for("app", "p@ss"),
        format!("mysql://app:p%40ss@127.0.0.1:{}", a.port())
    );
}

#[test]
fn run_sql_and_query_round_trip() {
    let sb = start("roundtrip");
    sb.run_sql(
        "CREATE DATABASE t1;
         CREATE TABLE t1.items (id INT PRIMARY KEY, name VARCHAR(50), note TEXT NULL);
         INSERT INTO t1.items VALUES (1, 'one', NULL), (2, 'two\\tand\\nmore', 'x'), (3, '', 'y');",
    )
    .unwrap();
    let rows = sb
        .query("SELECT id, name, note FROM t1.items ORDER BY id")
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec!["1".to_string(), "one".into(), "NULL".into()],
            vec!["2".to_string(), "two\tand\nmore".into(), "x".into()],
            vec!["3".to_string(), "".into(), "y".into()],
        ]
    );
    assert!(
        sb.query("SELECT 1 FROM t1.items WHERE 0")
            .unwrap()
            .is_empty()
    );

    // Errors carry the client's stderr.
    let err = sb
        .run_sql("SELECT * FROM t1.missing")
        .unwrap_err()
        .to_string();
    assert!(err.contains("doesn't exist"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    // load_sql_file
    let file = sb.dir().join("load.sql");
    std::fs::write(&file, "INSERT INTO t1.items VALUES (4, 'four', NULL);\n").unwrap();
    sb.load_sql_file(&file).unwrap();
    assert_eq!(
        sb.query("SELECT COUNT(*) FROM t1.items").unwrap(),
        vec![vec!["4".to_string()]]
    );
}

#[test]
fn restart_keeps_data_and_port() {
    let mut sb = start("restart");
    sb.run_sql("CREATE DATABASE r; CREATE TABLE r.t (v INT); INSERT INTO r.t VALUES (42);")
        .unwrap();
    let port = sb.port();
    let pid = sb.pid().unwrap();
    let t = Instant::now();
    sb.restart().unwrap();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(sb.port(), port);
    assert_ne!(sb.pid().unwrap(), pid);
    assert!(!pid_alive(pid));
    assert_eq!(
        sb.query("SELECT v FROM r.t").unwrap(),
        vec![vec!["42".to_string()]]
    );
    assert!(port_open(port));

    sb.stop_server().unwrap();
    assert!(sb.pid().is_none());
    assert!(!port_open(port));
    assert!(sb.run_sql("SELECT 1").is_err());
    sb.start_server().unwrap();
    assert_eq!(
        sb.query("SELECT v FROM r.t").unwrap(),
        vec![vec!["42".to_string()]]
    );
}

#[test]
fn start_server_on_taken_port_fails_with_log() {
    let mut sb = start("taken");
    let port = sb.port();
    sb.stop_server().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let msg = sb.start_server().unwrap_err().to_string();
    eprintln!("expected error: {msg}");
    assert!(msg.contains("error.log"), "{msg}");
    assert!(
        msg.contains("Address already in use") || msg.contains("Bind on TCP/IP port"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    drop(squatter);
    sb.start_server().unwrap();
    assert_eq!(sb.query("SELECT 1").unwrap(), vec![vec!["1".to_string()]]);
}

#[test]
fn drop_removes_dir_and_stops_server() {
    let sb = start("dropme");
    let dir = sb.dir().to_path_buf();
    let datadir = sb.datadir().to_path_buf();
    let port = sb.port();
    let pid = sb.pid().unwrap();
    assert!(datadir.is_dir());
    assert!(port_open(port));
    drop(sb);
    assert!(!datadir.exists());
    assert!(!dir.exists());
    assert!(!pid_alive(pid));
    assert!(!port_open(port));
}

#[test]
fn extra_args_are_passed() {
    let sb = Sandbox::start(SandboxOptions {
        name: "extra".into(),
        extra_args: vec!["--server-id=7".into(), "--log-bin=mysql-bin".into()],
    })
    .unwrap();
    let rows = sb.query("SELECT @@server_id, @@log_bin").unwrap();
    assert_eq!(rows, vec![vec!["7".to_string(), "1".to_string()]]);
    let plain = start("plain");
    assert_eq!(
        plain.query("SELECT @@log_bin").unwrap(),
        vec![vec!["0".to_string()]]
    );
}

#[test]
fn bad_extra_arg_reports_error_log() {
    let err = Sandbox::start(SandboxOptions::new("bad").arg("--no-such-option-xyz"))
        .expect_err("server must fail to start");
    let msg = err.to_string();
    assert!(msg.contains("no-such-option-xyz"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// PR_SET_PDEATHSIG fires when the forking *thread* exits: a server started from a
/// short-lived thread must survive that thread.
#[test]
fn server_outlives_the_thread_that_started_it() {
    let sb = std::thread::spawn(|| start("thread")).join().unwrap();
    let pid = sb.pid().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(pid));
    assert_eq!(sb.query("SELECT 1").unwrap(), vec![vec!["1".to_string()]]);
}

#[tokio::test]
async fn mysql_async_connects_over_tcp() {
    use mysql_async::prelude::Queryable;
    let sb = tokio::task::spawn_blocking(|| start("driver"))
        .await
        .unwrap();
    let opts = mysql_async::Opts::from_url(&sb.root_url()).unwrap();
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    conn.disconnect().await.unwrap();
    // Dropping from a blocking thread keeps the runtime responsive.
    tokio::task::spawn_blocking(move || drop(sb)).await.unwrap();
}

/// Not a real test on its own: re-invoked by `server_dies_with_its_process` in a child
/// process (with `CHILD_ENV` set) to start a sandbox and wait to be killed.
#[test]
fn child_helper() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let sb = start("orphan");
    println!(
        "SANDBOX pid={} port={} dir={}",
        sb.pid().unwrap(),
        sb.port(),
        sb.dir().display()
    );
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn server_dies_with_its_process() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // libtest prints "test child_helper ... " without a newline before the test's own
    // output, so look for the marker anywhere in a line. Read from a thread so a broken
    // child cannot hang this test.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("SANDBOX ") {
                let _ = tx.send(line[i + "SANDBOX ".len()..].to_string());
                break;
            }
        }
    });
    let rest = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(rest) => rest,
        Err(e) => {
            let _ = child.kill();
            panic!("child did not start a sandbox ({e}): {:?}", child.wait());
        }
    };
    let mut pid = 0u32;
    let mut port = 0u16;
    let mut dir = std::path::PathBuf::new();
    for kv in rest.split(' ') {
        match kv.split_once('=') {
            Some(("pid", v)) => pid = v.parse().unwrap(),
            Some(("port", v)) => port = v.parse().unwrap(),
            Some(("dir", v)) => dir = v.into(),
            _ => {}
        }
    }
    assert!(pid_alive(pid));
    assert!(port_open(port));

    // kill -9 the test process that owns the server.
    child.kill().unwrap();
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_alive(pid), "mariadbd {pid} outlived its process");
    assert!(
        !port_open(port),
        "port {port} still open: {}",
        String::from_utf8_lossy(
            &Command::new("ss")
                .args(["-tanp"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .lines()
        .filter(|l| l.contains(&format!(":{port}")))
        .collect::<Vec<_>>()
        .join(" / ")
    );

    // Its directory was left behind; stale cleanup removes it (another process's cleanup
    // may beat us to it, so only check that it is gone).
    cleanup_stale_dirs();
    assert!(!dir.exists(), "{dir:?} should have been removed");
}

#[test]
fn stale_dirs_of_dead_processes_are_removed() {
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    assert!(!pid_alive(dead_pid));
    let base = std::env::temp_dir();
    let stale = base.join(format!("bcsb-{dead_pid}-0-fake"));
    std::fs::create_dir_all(stale.join("data")).unwrap();
    let mine = base.join(format!("bcsb-{}-999-keep", std::process::id()));
    std::fs::create_dir_all(&mine).unwrap();
    cleanup_stale_dirs();
    assert!(!stale.exists());
    assert!(mine.exists(), "directories of live processes are kept");
    std::fs::remove_dir_all(&mine).unwrap();
}
