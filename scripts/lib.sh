# Shared by the scripts that fetch from Debian's archive (kernel-matrix,
# cross, vmlinux-header): sourced, never run. Each fact is written once here.

# The Debian mirror this machine's apt already uses (Debian's own by default).
debian_mirror() {
    local mirror
    mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    echo "${mirror:-http://deb.debian.org/debian}"
}

# Sets APT_OPTS: the options of a private apt configuration under $1 (its
# sources.list, written by the caller, parts, lists and cache) for
# architecture $2, so that /etc/apt and the machine's package state stay
# untouched. $1 may be a path inside a chroot.
private_apt() {
    local dir=$1 arch=$2
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$dir/sources.list"
        -o "Dir::Etc::SourceParts=$dir/parts"
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::Cache=$dir/cache"
        -o "Dir::State::status=/dev/null"
        -o "APT::Architecture=$arch"
        -o "APT::Architectures=$arch"
        -o "Acquire::Languages=none"
        -o "Debug::NoLocking=1"
    )
}
