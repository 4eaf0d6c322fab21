# shellcheck shell=bash
# Installs what vmpi needs on a fresh Debian machine with Rust, or says exactly what to run.
#   vmpi_prereqs          what running a system needs (QEMU, the x86_64-unknown-none target)
#   vmpi_prereqs --tests  and what the tests and benchmarks need too (uhyve, MPICH, cargo-fuzz)

vmpi_apt() { # PACKAGE...: install Debian packages, or say how
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "vmpi: installing $* (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "vmpi: missing $*; run: sudo apt-get install -y $*" >&2
        return 1
    fi
}

vmpi_cargo_install() { # BINARY CRATE VERSION WHY
    if ! command -v "$1" >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/$1" ]; then
        echo "vmpi: installing $2 $3 (cargo install; $4)"
        # Outside the repository, so its toolchain pin does not apply to the tool.
        (cd /tmp && cargo install "$2" --version "$3" --locked --quiet)
    fi
}

vmpi_prereqs() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    if [ "${1:-}" = --tests ]; then
        command -v mpicc >/dev/null || missing+=(mpich libmpich-dev)
    fi
    [ ${#missing[@]} -eq 0 ] || vmpi_apt "${missing[@]}"
    # rust-toolchain.toml names the x86_64-unknown-none target; make sure it is there.
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
        rustup target add x86_64-unknown-none
    fi
    if [ "${1:-}" = --tests ]; then
        # uhyve boots the same partition images as QEMU (tests/boot.rs).
        vmpi_cargo_install uhyve uhyve 0.10.0 "about 2.5 min" ||
            echo "vmpi: uhyve could not be installed: uhyve boot tests will be SKIPPED" >&2
        vmpi_cargo_install cargo-fuzz cargo-fuzz 0.13.2 "about 1.5 min"
    fi
    if [ -e /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        echo "vmpi: accelerator kvm (/dev/kvm)"
    else
        echo "vmpi: no usable /dev/kvm: VMs run under TCG (software emulation)"
    fi
}
