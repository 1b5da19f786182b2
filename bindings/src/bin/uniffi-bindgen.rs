//! The UniFFI bindings generator pinned to this workspace's uniffi version;
//! `scripts/gen-bindings.sh` runs it in library mode.

fn main() {
    uniffi::uniffi_bindgen_main()
}
