# ngx_http_openclaw_bridge_module
#
#   make run         nginx with the module on 127.0.0.1:8080 (conf-examples/)
#   make demo        a real OpenClaw gateway with a fake model, nginx with
#                    the module, and a prompt to chat through it
#   make demo-hub    the same, through a WebSocket hub that nginx dials
#   make test        unit tests, the whole suite (real gateways included),
#                    then the suite again with the module under ASan + UBSan
#   make test-asan   only the suite under AddressSanitizer + UBSan
#   make test-stress `make test` three times in a row beside two CPU-bound
#                    processes, as on a busy machine
#   make fuzz        build the libFuzzer targets and run each FUZZ_TIME s
#   make deb         the Debian package, built with dpkg-buildpackage:
#                    build/libnginx-mod-http-openclaw-bridge_<version>_<arch>.deb
#
# The module is built against Debian's nginx + nginx-dev by default, or
# against an nginx source tree given as NGINX_SRC=/path/to/nginx.

TOP        := $(abspath .)
BUILD      := $(TOP)/build
BUILD_ASAN := $(TOP)/build-asan
NGINX_SRC  ?= /usr/share/nginx/src
NGINX      ?= /usr/sbin/nginx
MODULE     := ngx_http_openclaw_bridge_module.so
SRCS       := $(wildcard src/*.c src/*.h) config
FUZZ_TIME  ?= 30
PROVE      ?= prove
OCB_CACHE  ?= $(HOME)/.cache/openclaw-bridge
export OCB_CACHE

TESTS      := $(sort $(wildcard t/*.t))
# the package's test installs the package `make deb` built on the stock
# nginx: once, without ASan (a few seconds)
TESTS_DEB  := t/90-deb.t
# the real-gateway tests take minutes of CPU on their own: ASan adds
# nothing to them that the fake-gateway tests do not already exercise
TESTS_ASAN := $(filter-out t/6% $(TESTS_DEB),$(TESTS))
TESTS_GATEWAY := $(filter t/6%,$(TESTS))

DEBS := nginx nginx-dev libcjson-dev libcurl4-openssl-dev curl \
        libmojolicious-perl libio-socket-ssl-perl \
        clang libclang-rt-14-dev gcc make perl openssl iproute2 \
        python3 python3-prometheus-client

# what `make deb` needs beside them: dpkg-buildpackage and debhelper (the
# nginx addon, dh-sequence-nginx, comes with nginx-dev); no fakeroot, as
# debian/control says Rules-Requires-Root: no
DEBS_DEB := dpkg-dev debhelper build-essential

# The version has one place: the first entry of debian/changelog.
PKG        := libnginx-mod-http-openclaw-bridge
VERSION    := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_ARCH   := $(shell dpkg --print-architecture 2>/dev/null)
DEB        := $(BUILD)/$(PKG)_$(VERSION)_$(DEB_ARCH).deb
DEB_INPUTS := $(SRCS) $(wildcard debian/* debian/*/*) README.md \
              conf-examples/openclaw-bridge.conf conf-examples/nginx.conf

CFLAGS_DEB := $(shell dpkg-buildflags --get CFLAGS 2>/dev/null) -fPIC \
              $(shell dpkg-buildflags --get CPPFLAGS 2>/dev/null)
LDFLAGS_DEB := $(shell dpkg-buildflags --get LDFLAGS 2>/dev/null) -fPIC
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer

.PHONY: all deps deps-deb gateways module module-asan unit run demo test \
        test-asan test-stress fuzz deb clean demo-hub

all: module

# Installs only what is missing, so a ready machine pays nothing.
define install_missing
	@missing=""; for p in $(1); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	$(2) \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_missing,$(DEBS),command -v npm >/dev/null 2>&1 \
	    || missing="$$missing npm";)

deps-deb: deps
	$(call install_missing,$(DEBS_DEB),)

# Node 24 and both OpenClaw gateway generations, once, into OCB_CACHE
gateways: deps
	t/gateway/install.sh $(OCB_CACHE)

# configure runs from the nginx tree (it sources ./auto/*) and, for
# Debian's tree, needs the flags of the stock binary from conf_flags so
# that the module is binary compatible with /usr/sbin/nginx.
define configure
	mkdir -p $(1)
	cd $(NGINX_SRC) && MOD=$(TOP) B=$(1) CCOPT="$(CFLAGS_DEB) $(2)" \
	    LDOPT="$(LDFLAGS_DEB) $(2)" bash -c '\
	    flags=(); \
	    if [ -f ./conf_flags ]; then . ./conf_flags; \
	        flags=("$${NGX_CONF_FLAGS[@]}"); \
	    else flags=(--with-compat --with-debug --with-http_ssl_module \
	        --with-threads --with-http_v2_module \
	        --with-http_auth_request_module); fi; \
	    ./configure --with-cc-opt="$$CCOPT" --with-ld-opt="$$LDOPT" \
	        "$${flags[@]}" --add-dynamic-module="$$MOD" \
	        --builddir="$$B"' > $(1)/configure.log 2>&1 \
	    || { tail -20 $(1)/configure.log; exit 1; }
endef

$(BUILD)/Makefile: config debian/changelog
	$(call configure,$(BUILD),)

$(BUILD_ASAN)/Makefile: config debian/changelog
	$(call configure,$(BUILD_ASAN),$(ASAN_FLAGS))

$(BUILD)/$(MODULE): $(BUILD)/Makefile $(SRCS)
	$(MAKE) -s -f $(BUILD)/Makefile -C $(NGINX_SRC) modules

$(BUILD_ASAN)/$(MODULE): $(BUILD_ASAN)/Makefile $(SRCS)
	$(MAKE) -s -f $(BUILD_ASAN)/Makefile -C $(NGINX_SRC) modules

module: deps $(BUILD)/$(MODULE)

# The ASan suite preloads nodlclose.so with the ASan runtime so that the
# module is still mapped when LeakSanitizer reports at exit, and its frames
# are symbolized (t/asan/nodlclose.c); the leaking module is only for the
# test that proves it (t/17-asan-leaks.t).
ASAN_HELPERS := $(BUILD_ASAN)/nodlclose.so \
                $(BUILD_ASAN)/ngx_openclaw_asan_leak_module.so

$(BUILD_ASAN)/nodlclose.so: t/asan/nodlclose.c
	mkdir -p $(BUILD_ASAN)
	cc -std=gnu99 -O1 -W -Wall -Wextra -Werror -shared -fPIC $< -o $@

# against the headers configure wrote for the ASan module, so that nginx
# takes it as binary compatible
$(BUILD_ASAN)/ngx_openclaw_asan_leak_module.so: t/asan/leak_module.c \
                                                $(BUILD_ASAN)/Makefile
	cc -O1 -g -W -Wall -Wno-unused-parameter -Werror -fno-omit-frame-pointer \
	    -shared -fPIC $(addprefix -I$(NGINX_SRC)/src/,core event \
	    event/modules os/unix) -I$(BUILD_ASAN) $< -o $@

module-asan: deps $(BUILD_ASAN)/$(MODULE) $(ASAN_HELPERS)

$(BUILD)/ws_codec_test: src/ngx_http_openclaw_ws.c src/ngx_http_openclaw_ws.h \
                        t/unit/ws_codec_test.c t/unit/tap.h
	mkdir -p $(BUILD)
	cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror $(ASAN_FLAGS) \
	    -fno-sanitize-recover=all -Isrc src/ngx_http_openclaw_ws.c \
	    t/unit/ws_codec_test.c -lcrypto -o $@

$(BUILD)/json_test: src/ngx_http_openclaw_json.c src/ngx_http_openclaw_json.h \
                   t/unit/json_test.c t/unit/tap.h
	mkdir -p $(BUILD)
	cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror $(ASAN_FLAGS) \
	    -fno-sanitize-recover=all -Isrc src/ngx_http_openclaw_json.c \
	    t/unit/json_test.c -o $@

# the same tests with the scanner's word-at-a-time path instead of SSE2
$(BUILD)/json_test_nosimd: src/ngx_http_openclaw_json.c \
                          src/ngx_http_openclaw_json.h t/unit/json_test.c \
                          t/unit/tap.h
	mkdir -p $(BUILD)
	cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror $(ASAN_FLAGS) -U__SSE2__ \
	    -fno-sanitize-recover=all -Isrc src/ngx_http_openclaw_json.c \
	    t/unit/json_test.c -o $@

$(BUILD)/signature_test: src/ngx_http_openclaw_signature.c \
                        src/ngx_http_openclaw_signature.h \
                        t/unit/signature_test.c t/unit/tap.h
	mkdir -p $(BUILD)
	cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror $(ASAN_FLAGS) \
	    -fno-sanitize-recover=all -Isrc src/ngx_http_openclaw_signature.c \
	    t/unit/signature_test.c -lcrypto -o $@

unit: deps $(BUILD)/ws_codec_test $(BUILD)/json_test $(BUILD)/json_test_nosimd \
      $(BUILD)/signature_test

# The gateway's token: OPENCLAW_GATEWAY_TOKEN, else the one in the local
# OpenClaw's own configuration, if there is one.
OPENCLAW_CONFIG ?= $(HOME)/.openclaw/openclaw.json
run: module
	mkdir -p $(BUILD)/run/logs $(BUILD)/run/modules $(BUILD)/run/tmp
	ln -sf $(BUILD)/$(MODULE) $(BUILD)/run/modules/$(MODULE)
	@if [ -z "$$OPENCLAW_GATEWAY_TOKEN" ] && [ -f $(OPENCLAW_CONFIG) ]; then \
	    echo "using the gateway token of $(OPENCLAW_CONFIG)"; fi
	OPENCLAW_GATEWAY_TOKEN="$${OPENCLAW_GATEWAY_TOKEN:-$$(perl \
	    t/gateway/token.pl $(OPENCLAW_CONFIG))}" \
	    $(NGINX) -p $(BUILD)/run/ -c $(TOP)/conf-examples/nginx.conf \
	    -e logs/error.log -t
	@echo "nginx with the module: ws://127.0.0.1:8080/ws (Ctrl-C stops it)"
	OPENCLAW_GATEWAY_TOKEN="$${OPENCLAW_GATEWAY_TOKEN:-$$(perl \
	    t/gateway/token.pl $(OPENCLAW_CONFIG))}" \
	    exec $(NGINX) -p $(BUILD)/run/ -c $(TOP)/conf-examples/nginx.conf \
	    -e logs/error.log -g 'daemon off; master_process on;'

# A real gateway from npm with a canned fake model, nginx with the module
# in front of it, and a prompt that streams the replies.
demo: module gateways
	perl t/gateway/demo.pl

demo-hub: module gateways
	perl t/gateway/demo.pl --hub

# The stock nginx binary is not instrumented, so the ASan runtime is
# preloaded for it, with nodlclose.so; leaks are checked by the tests
# through LSan reports (see t/lib/OCB.pm).
# The real-gateway tests run last and one at a time: each keeps a
# gateway busy for minutes, which would upset the timing of the others.
test: module unit module-asan gateways deb
	OCB_ASAN=0 $(PROVE) -j2 $(TESTS_ASAN) $(TESTS_DEB)
	OCB_ASAN=1 OCB_MODULE=$(BUILD_ASAN)/$(MODULE) $(PROVE) -j2 $(TESTS_ASAN)
	OCB_ASAN=0 $(PROVE) $(TESTS_GATEWAY)

# No test may depend on the machine being idle: the whole of `make test`,
# three times, with two busy loops taking the CPU beside it.  The loops
# are ended by their PIDs however the runs end: a failure stops them, and
# so does a signal at once (each run is waited for in the background,
# since the shell would only handle the signal after a foreground job).
test-stress: module unit module-asan gateways
	@hogs=""; run=""; \
	trap 'kill $$hogs $$run 2>/dev/null' EXIT; \
	trap 'exit 130' INT TERM HUP; \
	for i in 1 2; do sh -c 'while :; do :; done' & hogs="$$hogs $$!"; done; \
	start=$$(date +%s); \
	for n in 1 2 3; do \
	    echo "test-stress: run $$n of 3, beside two busy loops"; \
	    $(MAKE) --no-print-directory test & run=$$!; \
	    wait $$run || exit 1; \
	done; \
	run=""; \
	echo "test-stress: 3 runs passed in $$(( $$(date +%s) - start )) s"

test-asan: module-asan unit
	OCB_ASAN=1 OCB_MODULE=$(BUILD_ASAN)/$(MODULE) $(PROVE) -j2 $(TESTS_ASAN)

FUZZERS := $(BUILD)/fuzz_frame $(BUILD)/fuzz_utf8 $(BUILD)/fuzz_json \
           $(BUILD)/fuzz_headers

# the JSON scanner is checked against cJSON
$(BUILD)/fuzz_json: fuzz/fuzz_json.c src/ngx_http_openclaw_json.c \
                    src/ngx_http_openclaw_json.h
	mkdir -p $(BUILD)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
	    src/ngx_http_openclaw_json.c $< -lcjson -o $@

# the header values of the HTTP endpoint and the callbacks
$(BUILD)/fuzz_headers: fuzz/fuzz_headers.c src/ngx_http_openclaw_headers.c \
                       src/ngx_http_openclaw_headers.h
	mkdir -p $(BUILD)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
	    src/ngx_http_openclaw_headers.c $< -o $@

$(BUILD)/fuzz_%: fuzz/fuzz_%.c src/ngx_http_openclaw_ws.c \
                 src/ngx_http_openclaw_ws.h
	mkdir -p $(BUILD)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
	    src/ngx_http_openclaw_ws.c $< -lcrypto -o $@

fuzz: deps $(FUZZERS)
	for f in $(FUZZERS); do \
	    n=$${f##*/fuzz_}; mkdir -p $(BUILD)/corpus-$$n; \
	    $$f -max_total_time=$(FUZZ_TIME) -max_len=8192 \
	        -artifact_prefix=$(BUILD)/ $(BUILD)/corpus-$$n \
	        fuzz/corpus/$$n || exit 1; \
	done

# The package is built by Debian's tools from a copy of the tree (what
# dpkg-buildpackage writes beside and inside its source tree stays in
# build/deb/): debian/rules is dh with the nginx addon, see there.
deb: deps-deb $(DEB)

$(DEB): $(DEB_INPUTS)
	rm -rf $(BUILD)/deb
	mkdir -p $(BUILD)/deb/$(PKG)-$(VERSION)
	cp -R config src debian README.md conf-examples \
	    $(BUILD)/deb/$(PKG)-$(VERSION)/
	cd $(BUILD)/deb/$(PKG)-$(VERSION) && dpkg-buildpackage -b -us -uc \
	    > ../build.log 2>&1 || { tail -30 ../build.log; exit 1; }
	cp $(BUILD)/deb/$(notdir $@) $@
	@echo "$@"

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)

# The module against stock nginx proxy_pass, side by side (bench/README.md):
# BENCH_QUICK=1 for a two-minute smoke run, BENCH_MODULE=path/to.so to use
# a module that is already built instead of `make module`.
.PHONY: bench bench-inflight bench-pipeline bench-profile
bench:
	perl bench/run.pl

# only the slow-gateway runs: per-message cost and memory with 1k, 10k and
# 100k runs in flight in one worker (about a minute)
bench-inflight:
	BENCH_ONLY=inflight perl bench/run.pl

# only the pipelining runs: clients keeping 1, 64 and 1024 messages
# outstanding each, so that pipelining is seen to cost what pacing does
# (issue 10's overload case; about 40 s)
bench-pipeline:
	BENCH_ONLY=pipeline perl bench/run.pl

# instructions per relayed message, with callgrind (bench/callgrind.sh)
bench-profile: module
	command -v valgrind >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends valgrind >/dev/null; }
	bench/callgrind.sh $(BUILD)/$(MODULE)
