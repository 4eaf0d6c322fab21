//! Declares the `loom` cfg (model-checking build: `RUSTFLAGS="--cfg loom"`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
