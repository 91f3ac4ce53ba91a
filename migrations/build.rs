//! The database servers the tests may use: a test whose server URL is unset is compiled with
//! `#[ignore]`, so `cargo test` reports it as ignored instead of counting it as passed.
fn main() {
    for (var, cfg) in [
        ("DATABASE_URL_POSTGRES", "with_postgres"),
        ("DATABASE_URL_MYSQL", "with_mysql"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}
