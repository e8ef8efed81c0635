# Shell helpers shared by scripts/test and scripts/demo (sourced, not run).
# Debian 12 as root: every step installs only what is missing.

apt_install() {  # apt_install PACKAGE...: install the packages not installed yet
    local missing=() pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || { echo "need root to apt-get install ${missing[*]}" >&2; return 1; }
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
    echo "apt-get install ${missing[*]}"
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
    fi
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" \
        || { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update \
             && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}"; }
}

ensure_java_maven() {  # scripts/kafka-local needs java (17+) and, once, mvn
    if command -v java >/dev/null && command -v mvn >/dev/null; then
        return 0
    fi
    apt_install openjdk-17-jre-headless maven
}

ensure_venv_support() {  # Debian's python3 needs python3-venv for ensurepip
    "${PYTHON:-python3}" -c "import ensurepip" 2>/dev/null || apt_install python3-venv
}

ensure_go() {  # a Go toolchain on PATH: /usr/local/go if present, else Debian's golang
    if [[ -x /usr/local/go/bin/go ]]; then
        case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) export PATH="$PATH:/usr/local/go/bin" ;; esac
    fi
    command -v go >/dev/null || apt_install golang
}
