# shellcheck shell=bash
# Installs what vmpi needs on a fresh Debian machine with Rust, or says exactly what to run.
vmpi_prereqs() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "vmpi: installing ${missing[*]} (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "vmpi: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
            return 1
        fi
    fi
    # rust-toolchain.toml names the x86_64-unknown-none target; make sure it is there.
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
        rustup target add x86_64-unknown-none
    fi
    # uhyve boots the same partition images as QEMU (tests/boot.rs); ~2.5 min to build.
    if ! command -v uhyve >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/uhyve" ]; then
        echo "vmpi: installing uhyve 0.10.0 (cargo install)"
        (cd /tmp && cargo install uhyve --version 0.10.0 --locked --quiet) ||
            echo "vmpi: uhyve could not be installed: uhyve boot tests will be SKIPPED" >&2
    fi
    if [ -e /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        echo "vmpi: accelerator kvm (/dev/kvm)"
    else
        echo "vmpi: no usable /dev/kvm: VMs run under TCG (software emulation)"
    fi
}
