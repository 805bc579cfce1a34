//! Generates the bindings from the UCX headers that pkg-config finds.

use std::path::PathBuf;

fn main() {
    let ucx = match pkg_config::Config::new().atleast_version("1.10").probe("ucx") {
        Ok(lib) => lib,
        Err(e) => panic!(
            "tessera-ucx-sys needs UCX >= 1.10 with its headers and pkg-config file \
             (Debian/Ubuntu: apt install libucx-dev; scripts/install-deps.sh installs it): {e}"
        ),
    };
    let mut builder = bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <ucp/api/ucp.h>\n")
        .allowlist_function("uc[pst]_.*")
        .allowlist_type("uc[pst]_.*")
        .allowlist_var("(UC[PST]|uc[pst])_.*")
        // Constants named as in C (UCS_OK, not ucs_status_t_UCS_OK), and
        // every enum a plain integer type of its C size: ucs_status_t is a
        // packed enum of one byte, which a Rust enum would misread.
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .derive_default(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in &ucx.include_paths {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    let bindings = builder.generate().expect("bindgen could not read the UCX headers");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("write bindings.rs");
    let version = ucx.version;
    println!("cargo:rustc-env=TESSERA_UCX_VERSION={version}");
}
