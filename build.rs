//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no system `protoc` is needed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(["proto/messaging.proto"])?;
    // compile_fds ignores file_descriptor_set_path: write the set for reflection ourselves.
    let descriptors = compiler.encode_file_descriptor_set();
    std::fs::write(out_dir.join("messaging_descriptor.bin"), &descriptors)?;
    // Protobuf's JSON mapping (serde) for every message: Lambda's direct invocations carry
    // requests and replies in it (§5.5). Written next to prost's code as `messaging.v1.serde.rs`.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out_dir)
        .build(&[".messaging.v1"])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(compiler.file_descriptor_set())?;
    embed_client(&out_dir)?;
    servers_for_tests();
    server_binaries_for_tests();
    Ok(())
}

/// The outside servers the tests may use. A test whose server URL is unset is compiled with
/// `#[ignore]`, so `cargo test` reports it as ignored instead of counting it as passed.
fn servers_for_tests() {
    for (var, cfg) in [
        ("DATABASE_URL_POSTGRES", "with_postgres"),
        ("DATABASE_URL_MYSQL", "with_mysql"),
        ("BROKER_URL_REDIS", "with_redis"),
        ("BROKER_URL_NATS", "with_nats"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={var}");
        if env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

/// The database servers a test may start for itself (`tests/api/own_server.rs`: a server of
/// its own in a temp dir, which it stops and starts again). Found here, they are passed to
/// the tests as `MESSAGING_TEST_*` variables, with the cfg `with_pg_binaries` or
/// `with_mariadb_binaries`; not found, the tests that need them are compiled as ignored.
/// Looked for where Debian puts them, then on `PATH`. Installing them later takes a rebuild
/// (`touch build.rs`): watching directories that do not exist yet would rerun this script on
/// every build.
fn server_binaries_for_tests() {
    use std::path::{Path, PathBuf};
    println!("cargo::rustc-check-cfg=cfg(with_pg_binaries)");
    println!("cargo::rustc-check-cfg=cfg(with_mariadb_binaries)");
    let path_dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    let found = |dirs: &[PathBuf], names: &[&str]| -> Option<PathBuf> {
        dirs.iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.is_file())
    };
    let watch = |p: &Path| println!("cargo:rerun-if-changed={}", p.display());

    // PostgreSQL: one bin directory with all four tools; Debian's newest version first,
    // then PATH (whose `initdb` may be a link into such a directory).
    let mut pg_dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    pg_dirs.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    let from_path = found(&path_dirs, &["initdb"])
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let pg_bin = pg_dirs
        .into_iter()
        .map(|(_, d)| d)
        .chain(from_path)
        .find(|d| {
            ["initdb", "postgres", "pg_ctl", "pg_isready"]
                .iter()
                .all(|t| d.join(t).is_file())
        });
    if let Some(dir) = pg_bin {
        watch(&dir.join("postgres"));
        println!("cargo:rustc-env=MESSAGING_TEST_PG_BIN={}", dir.display());
        println!("cargo:rustc-cfg=with_pg_binaries");
    }

    // MariaDB: the server, its data-directory installer and its admin client.
    let with_path = |dirs: &[&str]| -> Vec<PathBuf> {
        dirs.iter()
            .map(PathBuf::from)
            .chain(path_dirs.iter().cloned())
            .collect()
    };
    let server = found(
        &with_path(&["/usr/sbin", "/usr/local/sbin"]),
        &["mariadbd", "mysqld"],
    );
    let install = found(
        &with_path(&["/usr/bin", "/usr/local/bin"]),
        &["mariadb-install-db", "mysql_install_db"],
    );
    let admin = found(
        &with_path(&["/usr/bin", "/usr/local/bin"]),
        &["mariadb-admin", "mysqladmin"],
    );
    if let (Some(server), Some(install), Some(admin)) = (server, install, admin) {
        watch(&server);
        for (var, p) in [
            ("MESSAGING_TEST_MARIADBD", &server),
            ("MESSAGING_TEST_MARIADB_INSTALL_DB", &install),
            ("MESSAGING_TEST_MARIADB_ADMIN", &admin),
        ] {
            println!("cargo:rustc-env={var}={}", p.display());
        }
        println!("cargo:rustc-cfg=with_mariadb_binaries");
    }
}

/// Embeds the browser client (`client/`, without its tests and node tooling) so the binary
/// serves it wherever it runs.
fn embed_client(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    // Watch what is embedded, not the folder: `client/` also holds node_modules and test
    // artifacts, which would otherwise rebuild the crate after every npm or browser run.
    // (A new top-level file needs a touch of build.rs; new files in subfolders are seen.)
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("client");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !matches!(name, "node_modules" | "test" | "tests" | "artifacts")
                    && !name.starts_with('.')
                {
                    println!("cargo:rerun-if-changed={}", path.display());
                    stack.push(path);
                }
                continue;
            }
            let content_type = match path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
            {
                "js" | "mjs" => "text/javascript; charset=utf-8",
                "ts" => "application/typescript; charset=utf-8",
                "html" => "text/html; charset=utf-8",
                "css" => "text/css; charset=utf-8",
                "svg" => "image/svg+xml",
                "png" => "image/png",
                "ico" => "image/x-icon",
                "md" => "text/markdown; charset=utf-8",
                _ => continue,
            };
            let rel = path
                .strip_prefix(&root)?
                .to_string_lossy()
                .replace('\\', "/");
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(format!(
                "    (\"/client/{rel}\", \"{content_type}\", include_bytes!({:?})),\n",
                path.display().to_string()
            ));
        }
    }
    files.sort();
    let code = format!(
        "/// (path, content type, bytes) of each embedded client file.\npub static ASSETS: &[(&str, &str, &[u8])] = &[\n{}];\n",
        files.concat()
    );
    std::fs::write(out_dir.join("client_assets.rs"), code)?;
    Ok(())
}
