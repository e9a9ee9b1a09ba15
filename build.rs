//! Compiles every `shaders/*.wgsl` to SPIR-V with naga (pure Rust: no system shader
//! compiler), so `cargo build` alone produces the kernels' GPU code.
//!
//! Each shader is parsed, validated (with push constants — WGSL `var<immediate>` —
//! allowed) and written as SPIR-V 1.3 (Vulkan 1.1 and later load it) to
//! `$OUT_DIR/<stem>.spv`. An invalid shader fails the build with its file name and
//! naga's message.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    let out_dir = match env::var_os("OUT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => fail("OUT_DIR is not set; run the build through cargo"),
    };
    let entries = match fs::read_dir("shaders") {
        Ok(entries) => entries,
        Err(e) => fail(&format!("cannot read the shaders/ directory: {e}")),
    };
    let mut shaders: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    shaders.sort();
    for path in &shaders {
        println!("cargo:rerun-if-changed={}", path.display());
        let words = compile(path).unwrap_or_else(|message| fail(&message));
        let mut bytes = Vec::with_capacity(words.len() * 4);
        for word in &words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = out_dir.join(format!("{stem}.spv"));
        if let Err(e) = fs::write(&target, bytes) {
            fail(&format!("cannot write {}: {e}", target.display()));
        }
    }
}

/// Parses, validates and writes one WGSL shader as SPIR-V words.
fn compile(path: &Path) -> Result<Vec<u32>, String> {
    let name = path.display().to_string();
    let source =
        fs::read_to_string(path).map_err(|e| format!("shader {name}: cannot read it: {e}"))?;
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| {
        format!(
            "shader {name} does not parse:\n{}",
            e.emit_to_string_with_path(&source, &name)
        )
    })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::IMMEDIATES,
    );
    let info = validator.validate(&module).map_err(|e| {
        format!(
            "shader {name} is invalid:\n{}",
            e.emit_to_string_with_path(&source, &name)
        )
    })?;
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        // No debug names: the same SPIR-V whatever the build profile.
        flags: naga::back::spv::WriterFlags::empty(),
        // Every loop in these shaders is bounded by its own arithmetic.
        force_loop_bounding: false,
        ..Default::default()
    };
    naga::back::spv::write_vec(&module, &info, &options, None).map_err(|e| {
        let mut message = format!("shader {name}: SPIR-V output failed: {e}");
        let mut source_err = std::error::Error::source(&e);
        while let Some(inner) = source_err {
            let _ = write!(message, ": {inner}");
            source_err = inner.source();
        }
        message
    })
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    panic!("photofinish build script: {message}");
}
