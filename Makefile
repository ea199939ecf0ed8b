# sluice - build, test and run. `make run` and `make test` are all a newcomer needs.

DEB_PKGS := build-essential pkg-config libluajit-5.1-dev luajit libuv1-dev \
            libmsgpack-dev libssl-dev libhttp-parser-dev libyajl-dev zlib1g-dev \
            lua-busted python3 python3-msgpack python3-pytest python3-jsonschema curl \
            prometheus wrk clang libclang-rt-14-dev valgrind \
            libcurl4-openssl-dev rsyslog libhiredis-dev redis-server redis-tools \
            libnats-dev nats-server librdkafka-dev kcat
PKGS     := luajit libuv msgpack openssl yajl libcurl zlib hiredis libnats rdkafka

BUILD    ?= build
CC       ?= cc
SAN      ?=
CFLAGS   ?= -O2 -g
LAYERS   := core codec config net lua delivery worker inputs outputs admin cli
LAYER_INC = $(patsubst %,-Iengine/%,$(LAYERS))
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC \
            $(LAYER_INC) $(SAN)
override LDFLAGS += $(SAN)

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lm

ENGINE_SRC  := $(sort $(wildcard engine/*/*.c))
ENGINE_OBJ  := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
LIB_OBJ     := $(filter-out $(BUILD)/engine/cli/main.o,$(ENGINE_OBJ))
CTEST_SRC   := $(sort $(wildcard tests/c/test_*.c))
CTEST_BIN   := $(CTEST_SRC:tests/c/%.c=$(BUILD)/tests/%)
TOOL_SRC    := $(filter-out tests/tools/failmalloc.c,$(sort $(wildcard tests/tools/*.c)))
TOOL_BIN    := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)

.PHONY: all deps run test test-asan bench soak clean fuzz chaos layers \
        install uninstall

all: $(BUILD)/sluice $(CTEST_BIN) $(TOOL_BIN) $(BUILD)/tools/failmalloc.so \
     $(BUILD)/sluice_pattern_test.so \
     $(BUILD)/sluice_core.so

# Install what is missing from Debian; skip what is there.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

$(BUILD)/engine/%.o: engine/%.c $(wildcard engine/*/*.h) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/sluice: $(ENGINE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/tests/%: tests/c/%.c tests/c/test.h $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Itests/c -o $@ $< $(LIB_OBJ) $(LDFLAGS) $(PKG_LIBS)

$(BUILD)/tools/%: tests/tools/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(LIB_OBJ) $(LDFLAGS) $(PKG_LIBS)

# The malloc fault injector, preloaded into the binary by the out-of-memory
# tests. Never sanitized: ASan brings its own malloc.
$(BUILD)/tools/failmalloc.so: tests/tools/failmalloc.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fsanitize% -fno-sanitize%,$(CFLAGS)) -fPIC -shared \
	  -o $@ $< -ldl

# engine/lua/pattern.c as a Lua module for tests/lua/pattern_spec.lua. Not linked
# to libluajit and never sanitized: it must load into a plain luajit host.
$(BUILD)/sluice_pattern_test.so: tests/lua/sluice_pattern_test.c engine/lua/pattern.c engine/lua/pattern.h | deps
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fsanitize% -fno-sanitize%,$(CFLAGS)) -fPIC \
	  $(PKG_CFLAGS) -shared -o $@ tests/lua/sluice_pattern_test.c engine/lua/pattern.c

# The rule sandbox as the Lua C module sluice_core, for busted through
# scripts/sluice/testing.lua: the engine's own objects, not linked to
# libluajit (the luajit host provides the Lua API). Sanitized objects could
# not load into a plain luajit, so under SAN the module is built from
# unsanitized copies in $(BUILD)/core/.
CORE_SRC := engine/lua/testing.c engine/lua/rule.c engine/lua/luacodec.c \
            engine/lua/state.c engine/lua/env.c engine/lua/api.c engine/lua/ev.c \
            engine/lua/proxy.c \
            engine/lua/pattern.c engine/codec/codec.c engine/codec/event.c \
            engine/codec/json.c engine/core/buf.c engine/core/router.c \
            engine/core/utf8.c engine/core/ratelimit.c engine/codec/schema.c \
            engine/core/regex.c engine/config/schemas.c \
            engine/config/luastate.c
ifeq ($(strip $(SAN)),)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
else
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/core/%.o)
endif

$(BUILD)/core/engine/%.o: engine/%.c $(wildcard engine/*/*.h) | deps
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fsanitize% -fno-sanitize%,$(CFLAGS)) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/sluice_core.so: $(CORE_OBJ)
	$(CC) -shared -o $@ $^ $(filter-out -lluajit%,$(PKG_LIBS))

# sluice_core.so too: `sluice test` needs it beside the binary.
run: $(BUILD)/sluice $(BUILD)/sluice_core.so
	$(BUILD)/sluice run -c sluice.conf.lua

# The binary, the Lua runtime and the sandbox module. The binary finds the
# other two relative to its own path (../share/sluice/scripts and
# ../lib/sluice), so a DESTDIR staging tree or a moved prefix works too.
PREFIX  ?= /usr/local
DESTDIR ?=
SL_BINDIR  = $(DESTDIR)$(PREFIX)/bin
SL_LIBDIR  = $(DESTDIR)$(PREFIX)/lib/sluice
SL_DATADIR = $(DESTDIR)$(PREFIX)/share/sluice

install: $(BUILD)/sluice $(BUILD)/sluice_core.so
	install -d $(SL_BINDIR) $(SL_LIBDIR) $(SL_DATADIR)/scripts
	install -m 0755 $(BUILD)/sluice $(SL_BINDIR)/sluice
	install -m 0644 $(BUILD)/sluice_core.so $(SL_LIBDIR)/sluice_core.so
	cd scripts && find . -name '*.lua' | while read -r f; do \
	  install -D -m 0644 "$$f" "$(SL_DATADIR)/scripts/$$f" || exit 1; done

uninstall:
	rm -f $(SL_BINDIR)/sluice $(SL_LIBDIR)/sluice_core.so
	rm -rf $(SL_DATADIR)/scripts
	-rmdir $(SL_LIBDIR) $(SL_DATADIR) 2>/dev/null

# Folders are layers: fails when a file includes a header of a higher one.
layers:
	@tests/layers.sh

test: all
	@BUILD=$(BUILD) tests/run.sh

# The same suites under AddressSanitizer and UBSan, in their own build dir.
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan CC=clang \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	@BUILD=build-asan SLUICE_ASAN=1 \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh

bench: all
	@BUILD=$(BUILD) tests/bench/run.sh

soak: all
	@BUILD=$(BUILD) tests/soak/run.sh

# Slow fault tests (disk full on a small tmpfs, fd exhaustion, kill -9
# loops; root for mount and prlimit), each printing its figures. Not part
# of `make test`.
chaos: all
	@SLUICE_BIN=$(CURDIR)/$(BUILD)/sluice /usr/bin/python3 -m pytest -q -s \
	  -p no:cacheprovider tests/chaos $(PYTEST_ARGS)

# libFuzzer targets for the parsers, built with clang; run one by hand, e.g.
# build/fuzz/fuzz_codec -max_total_time=60. `make test` (tests/run.sh) builds
# them and runs each for FUZZ_SECONDS (5).
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer \
               -Wall -Wextra $(LAYER_INC) -Itests/fuzz \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined

fuzz: $(BUILD)/fuzz/fuzz_codec $(BUILD)/fuzz/fuzz_pattern $(BUILD)/fuzz/fuzz_http \
      $(BUILD)/fuzz/fuzz_json $(BUILD)/fuzz/fuzz_spool $(BUILD)/fuzz/fuzz_forward \
      $(BUILD)/fuzz/fuzz_syslog $(BUILD)/fuzz/fuzz_otlp $(BUILD)/fuzz/fuzz_schema \
      $(BUILD)/fuzz/fuzz_luacodec $(BUILD)/fuzz/fuzz_rfc3339

$(BUILD)/fuzz/fuzz_codec: tests/fuzz/fuzz_codec.c tests/fuzz/fuzz.h engine/codec/codec.c engine/core/buf.c \
                          engine/codec/event.c engine/codec/event.h \
                          engine/codec/codec.h engine/core/buf.h engine/core/common.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_codec.c engine/codec/codec.c engine/core/buf.c \
	  engine/codec/event.c engine/core/utf8.c -lpthread

# Compares with LuaJIT's own string library, so it links libluajit.
$(BUILD)/fuzz/fuzz_pattern: tests/fuzz/fuzz_pattern.c engine/lua/pattern.c \
                            engine/lua/pattern.h engine/core/common.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags luajit) -o $@ \
	  tests/fuzz/fuzz_pattern.c engine/lua/pattern.c $(shell pkg-config --libs luajit)

# The msgpack <-> Lua codec (ev.headers, ev.payload copies, sluice.copy)
# in a LuaJIT state; proxy.c for the ev.payload parts it encodes (the
# target stubs the three sandbox functions proxy.c names), json.c for
# sl_luacodec_push_json.
FUZZ_LUACODEC_SRC := engine/lua/luacodec.c engine/lua/proxy.c engine/codec/codec.c \
                     engine/codec/json.c engine/core/buf.c engine/core/utf8.c
$(BUILD)/fuzz/fuzz_luacodec: tests/fuzz/fuzz_luacodec.c $(FUZZ_LUACODEC_SRC) \
                             engine/lua/luacodec.h engine/lua/proxy.h engine/lua/box.h \
                             engine/codec/codec.h engine/codec/json.h engine/core/buf.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags luajit yajl) -o $@ \
	  tests/fuzz/fuzz_luacodec.c $(FUZZ_LUACODEC_SRC) \
	  $(shell pkg-config --libs luajit yajl) -lm

# The HTTP server over loopback connections, so the conn layer under it runs
# too (conn.c wants config.c for addresses, config.c wants LuaJIT).
FUZZ_HTTP_SRC := $(wildcard engine/net/*.c) engine/core/buf.c engine/core/utf8.c \
                 engine/codec/log.c engine/codec/codec.c engine/config/config.c \
                 engine/config/schemas.c engine/config/luastate.c engine/codec/schema.c \
                 engine/codec/json.c engine/core/regex.c engine/core/metric.c \
                 engine/core/histogram.c engine/core/router.c engine/core/cpus.c
$(BUILD)/fuzz/fuzz_http: tests/fuzz/fuzz_http.c tests/fuzz/fuzz.h $(FUZZ_HTTP_SRC) \
                         $(wildcard engine/*/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(PKG_CFLAGS) -o $@ tests/fuzz/fuzz_http.c \
	  $(FUZZ_HTTP_SRC) $(PKG_LIBS)

$(BUILD)/fuzz/fuzz_json: tests/fuzz/fuzz_json.c tests/fuzz/fuzz.h engine/codec/json.c engine/codec/codec.c \
                         engine/core/buf.c engine/codec/json.h engine/codec/codec.h engine/core/buf.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags yajl) -o $@ \
	  tests/fuzz/fuzz_json.c engine/codec/json.c engine/codec/codec.c engine/core/buf.c \
	  engine/core/utf8.c \
	  $(shell pkg-config --libs yajl)

# The syslog parser and the payload it writes.
$(BUILD)/fuzz/fuzz_syslog: tests/fuzz/fuzz_syslog.c tests/fuzz/fuzz.h engine/codec/syslog.c engine/codec/codec.c \
                           engine/core/buf.c engine/codec/syslog.h engine/codec/codec.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_syslog.c engine/codec/syslog.c \
	  engine/codec/codec.c engine/core/buf.c engine/core/utf8.c
# OTLP logs JSON through the JSON reader and the OTLP walk.
$(BUILD)/fuzz/fuzz_otlp: tests/fuzz/fuzz_otlp.c tests/fuzz/fuzz.h engine/codec/otlp.c engine/codec/json.c \
                         engine/codec/codec.c engine/codec/event.c engine/core/buf.c \
                         engine/codec/otlp.h engine/codec/json.h engine/codec/codec.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags yajl) -o $@ \
	  tests/fuzz/fuzz_otlp.c engine/codec/otlp.c engine/codec/json.c \
	  engine/codec/codec.c engine/codec/event.c engine/core/buf.c \
	  engine/core/utf8.c $(shell pkg-config --libs yajl)

# The schema compiler and checker, and the pattern NFA under them.
$(BUILD)/fuzz/fuzz_schema: tests/fuzz/fuzz_schema.c tests/fuzz/fuzz.h engine/codec/schema.c engine/core/regex.c \
                           engine/codec/json.c engine/codec/codec.c engine/core/buf.c \
                           engine/codec/schema.h engine/core/regex.h engine/codec/codec.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags yajl) -o $@ \
	  tests/fuzz/fuzz_schema.c engine/codec/schema.c engine/core/regex.c \
	  engine/codec/json.c engine/codec/codec.c engine/core/buf.c \
	  engine/core/utf8.c $(shell pkg-config --libs yajl) -lm

# RFC 3339 times (the HTTP input's "time"), against libc's calendar.
$(BUILD)/fuzz/fuzz_rfc3339: tests/fuzz/fuzz_rfc3339.c tests/fuzz/fuzz.h engine/codec/rfc3339.c \
                            engine/codec/rfc3339.h engine/core/common.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_rfc3339.c engine/codec/rfc3339.c

# Recovery of a damaged segment file (writes under /tmp).
$(BUILD)/fuzz/fuzz_spool: tests/fuzz/fuzz_spool.c tests/fuzz/fuzz.h engine/delivery/spool.c engine/core/buf.c \
                          engine/delivery/spool.h engine/core/buf.h engine/core/common.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_spool.c engine/delivery/spool.c \
	  engine/core/buf.c -lpthread

# The forward input's frame parser (zlib inflates, OpenSSL digests).
$(BUILD)/fuzz/fuzz_forward: tests/fuzz/fuzz_forward.c tests/fuzz/fuzz.h engine/codec/forward.c \
                            engine/codec/codec.c engine/core/buf.c \
                            engine/codec/forward.h engine/codec/codec.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_forward.c engine/codec/forward.c \
	  engine/codec/codec.c engine/core/buf.c engine/core/utf8.c \
	  $(shell pkg-config --libs zlib libcrypto)

clean:
	rm -rf build build-asan
